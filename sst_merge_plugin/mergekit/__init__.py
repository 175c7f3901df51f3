"""mergekit subpackage."""
