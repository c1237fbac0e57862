// placeholder: tests for layered
