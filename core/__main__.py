from llmrt.cli import main

main()
