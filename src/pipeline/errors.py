"""The one exception type for bad input: the CLI prints it as a single line and exits with code 2."""


class PipelineInputError(Exception):
    """Bad config or data. The message names the file, row or key path so the user can fix it."""
