// placeholder: tests for model
