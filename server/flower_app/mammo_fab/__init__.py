"""FAB shim: the Flower app that `flwr run` ships holds no logic, only these two imports.

The real ServerApp/ClientApp live in the installed mammo-fl package, so the FAB stays tiny and
every hospital runs the code it installed (and reviewed) itself.
"""
