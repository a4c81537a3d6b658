"""r1vla: the command-line layer (doctor, demos, train, eval, compare, study). Imports nothing heavy."""

__version__ = "0.2.0"
