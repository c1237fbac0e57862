// placeholder: tests for key
