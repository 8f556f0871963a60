"""Network definitions. Building a model never reads a file or the network by itself."""
