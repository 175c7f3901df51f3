"""fisher subpackage."""
