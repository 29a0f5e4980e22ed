#!/bin/sh
# The hello image's workload. Modes (the image's CMD is "serve"):
#   serve      greet on stdout, a line on stderr, then serve the greeting over HTTP on $PORT
#   once       greet on stdout and stderr, then exit 0
#   exit N     greet, then exit with code N (for crash-loop tests)
# While serving, busybox httpd also runs a few CGI programs the gateway's tests call through the
# gateway (tests/e2e/test_gateway.py): /cgi-bin/whoami (this VM's hostname and the request's
# headers as the workload sees them), /cgi-bin/stream (three Server-Sent Events, a second apart),
# /cgi-bin/sick and /cgi-bin/well (from now on / answers 503, from busybox httpd's fallback
# /cgi-bin/index.cgi once index.html is gone, or the greeting again: the health check fails or
# passes). With ECHO_PORT set, a raw TCP echo listens on that port too; with WS_PORT set, a
# WebSocket server that sends three text frames a second apart ("tick N <hostname>"), then closes.
: "${GREETING:=Hello from Gantry}"
: "${PORT:=8080}"
mode="${1:-serve}"
echo "$GREETING"
echo "hello: mode $mode, port $PORT" >&2
cgi() {  # name, body of a CGI program that answers text
  printf '#!/bin/sh\n%s\n' "$2" > "/tmp/www/cgi-bin/$1"
  chmod 755 "/tmp/www/cgi-bin/$1"
}
case "$mode" in
  once) exit 0 ;;
  exit) exit "${2:-1}" ;;
  serve)
    mkdir -p /tmp/www/cgi-bin
    printf '%s\n' "$GREETING" > /tmp/www/greeting
    cp /tmp/www/greeting /tmp/www/index.html
    cgi whoami 'printf "Content-Type: text/plain\n\nhost %s\n" "$(hostname)"; env | grep ^HTTP_ | sort'
    cgi stream 'printf "Content-Type: text/event-stream\nCache-Control: no-cache\n\n"
for n in 1 2 3; do printf "data: tick %s %s\n\n" "$n" "$(date +%s)"; sleep 1; done'
    cgi index.cgi 'printf "Status: 503 Service Unavailable\nContent-Type: text/plain\n\nsick\n"'
    cgi sick 'rm -f /tmp/www/index.html; printf "Content-Type: text/plain\n\nsick %s\n" "$(hostname)"'
    cgi well 'cp /tmp/www/greeting /tmp/www/index.html; printf "Content-Type: text/plain\n\nwell %s\n" "$(hostname)"'
    [ -n "${ECHO_PORT:-}" ] && busybox nc -ll -p "$ECHO_PORT" -e cat &
    if [ -n "${WS_PORT:-}" ]; then
      cat > /tmp/ws <<'WS'
#!/bin/sh
# A WebSocket server on one connection (busybox nc -e): the handshake of RFC 6455 section
# 4.2.2, then three text frames a second apart, then a close frame.
cr=$(printf '\r')
key=
while IFS= read -r line; do
  line=${line%"$cr"}
  [ -z "$line" ] && break
  case "$line" in [Ss][Ee][Cc]-[Ww][Ee][Bb][Ss][Oo][Cc][Kk][Ee][Tt]-[Kk][Ee][Yy]:*) key=${line#*:}; key=${key# } ;; esac
done
accept=$(printf '%s258EAFA5-E914-47DA-95CA-C5AB0DC85B11' "$key" | sha1sum | cut -d' ' -f1 | xxd -r -p | base64)
printf 'HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n' "$accept"
for n in 1 2 3; do
  msg="tick $n $(hostname)"
  len=$(printf %03o ${#msg})  # under 126 bytes: a one-byte length
  printf "\\201\\${len}%s" "$msg"
  sleep 1
done
printf "\210\000"
WS
      chmod 755 /tmp/ws
      busybox nc -ll -p "$WS_PORT" -e /tmp/ws &
    fi
    exec httpd -f -p "$PORT" -h /tmp/www ;;
  *) echo "hello: unknown mode $mode" >&2; exit 2 ;;
esac
