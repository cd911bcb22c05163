"""The toy world and model: planted concept rates that every measurement can be held to."""
