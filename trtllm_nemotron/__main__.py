from trtllm_nemotron.cli import main

main()
