"""Pure numpy kernels (float64, no I/O): the mathematics of every metric."""
