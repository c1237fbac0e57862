// placeholder: tests for codec
