"""Pure builders of every remote command. Nothing here touches the network.

Each area has its own module (`facts`, release/compose layout commands, ...); all share `base` for
quoting and validation, so a value reaches a remote shell only through `shlex.quote`.
"""
