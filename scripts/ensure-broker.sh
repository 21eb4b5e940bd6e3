#!/usr/bin/env bash
# Makes sure an MQTT broker answers on 127.0.0.1:1883 for the tests: machines of this kind start
# Mosquitto there; a fresh or restarted one may not have, so start it the way the machine does.
set -euo pipefail
up() { (exec 3<>/dev/tcp/127.0.0.1/1883) 2>/dev/null; }
if up; then exit 0; fi
MOSQ=$(command -v mosquitto || echo /usr/sbin/mosquitto)
if [ -f /etc/mosquitto/mosquitto.conf ]; then
  "$MOSQ" -d -c /etc/mosquitto/mosquitto.conf
else
  "$MOSQ" -d -p 1883
fi
for _ in $(seq 50); do up && exit 0; sleep 0.1; done
echo "ensure-broker: no MQTT broker on 127.0.0.1:1883 after starting mosquitto" >&2
exit 1
