"""The one error type the emulation raises for things a user or the machine got wrong."""
from topologies.errors import TestbedError


class EmulationError(TestbedError, RuntimeError):
    """The network cannot be built or changed as asked; the message says why and what to do."""
