// placeholder: tests for memoise
