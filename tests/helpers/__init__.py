"""Helpers shared by the tests: tiny model repositories, training configs and servers."""
