#!/bin/sh
# Runs inside the image: /etc/hello/name comes from the recipe's `write:` step.
echo "Hello from $(cat /etc/hello/name)"
echo "(busybox $(busybox | head -n 1 | cut -d' ' -f2), $(id -un), $(uname -m))"
