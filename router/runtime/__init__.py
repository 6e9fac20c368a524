"""Putting it together: the aiohttp application, the process or workers with
graceful stop and hot reload, and the command line.

The top layer: it may import any package.
"""
