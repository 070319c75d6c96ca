"""Exception hierarchy. Every error the CLI shows a user derives from `NemotronError`.

Messages follow one shape: what failed, expected vs got, then how to fix it.
`assert` is only for internal invariants (shapes inside numeric code); user input always raises.
"""

from __future__ import annotations


class NemotronError(Exception):
    """Base for errors the CLI shows to the user (exit status 1)."""


class ConfigError(NemotronError):
    """A config.json that is missing, malformed, inconsistent or describes an unsupported model."""


class CheckpointError(NemotronError):
    """A checkpoint directory whose files or tensors do not match what its config implies."""


class QuantError(NemotronError):
    """A quantization recipe or input that cannot be quantized."""


class PluginError(NemotronError):
    """A plugin kernel that cannot be compiled or run as asked."""


class RuntimeStateError(NemotronError):
    """A generation request the runtime cannot serve (over-long prompt, bad sampling option, no free slot)."""


class BuildError(NemotronError):
    """An engine build that cannot proceed (impossible memory plan, bad target, missing toolchain)."""


class PackageError(NemotronError):
    """A Triton model repository that cannot be written or served."""


class ClientError(NemotronError):
    """A client request that failed: connection refused, server error, bad response."""
