#!/bin/sh
# The hello image's workload. Modes (the image's CMD is "serve"):
#   serve      greet on stdout, a line on stderr, then serve the greeting over HTTP on $PORT
#   once       greet on stdout and stderr, then exit 0
#   exit N     greet, then exit with code N (for crash-loop tests)
: "${GREETING:=Hello from Gantry}"
: "${PORT:=8080}"
mode="${1:-serve}"
echo "$GREETING"
echo "hello: mode $mode, port $PORT" >&2
case "$mode" in
  once) exit 0 ;;
  exit) exit "${2:-1}" ;;
  serve)
    mkdir -p /tmp/www
    printf '%s\n' "$GREETING" > /tmp/www/index.html
    exec httpd -f -p "$PORT" -h /tmp/www ;;
  *) echo "hello: unknown mode $mode" >&2; exit 2 ;;
esac
