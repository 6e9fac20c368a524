"""Built-in scoring plugins, one file each (installed as goproxy_router.plugins).

They use the plugin API of goproxy_router.scoring as any third-party plugin does, and
may also read protocol patterns, routing's country table and upstream statistics.
Must not import storage, forwarding, serving, ops or runtime.
"""
