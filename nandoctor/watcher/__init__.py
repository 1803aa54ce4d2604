"""The in-loop guard (`nandoctor.watch`) and the crash bundles it writes.

The package is not called `watch`: importing `nandoctor.watch.<x>` would rebind the public
function `nandoctor.watch` to the package.
"""
