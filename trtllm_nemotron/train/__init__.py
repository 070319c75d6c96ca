"""Training the embedded default model (`trtllm-nemotron train-tiny`): data, training loop, evaluation."""
