"""One exception type for every bad input, so the CLI and the daemon can report it in one line."""


class InspectdError(Exception):
    """A user-facing error: the message names the input and what was expected."""


class BadImageError(InspectdError):
    """An image that cannot be read, decoded or used."""


class BundleError(InspectdError):
    """A model bundle that is missing, incomplete or fails its manifest."""


class ConfigError(InspectdError):
    """An unknown method, backbone, layer or a bad setting."""
