"""The sans-IO protocol core: pure state machine, no I/O, no clock, no global randomness."""
