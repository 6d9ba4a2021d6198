#!/usr/bin/env bash
# Runs one single-node Apache Cassandra in the foreground, for tests and for trying the scale
# path on one machine: `scripts/cassandra-node.sh DIR CQL_PORT [STORAGE_PORT]`.
# The server is the pinned cassandra-all from Maven Central that `scripts/setup-tools.sh
# --cassandra` resolved into .tools/cassandra/lib, on the JDK it found; data, logs and config live under DIR (made
# fresh by the caller). Ready when the log says "Starting listening for CQL clients".
# MSGXC_CASSANDRA_HEAP (default 1G) sizes the heap; MSGXC_CASSANDRA_TEST=1 turns off fsync and
# the system keyspace's durability (throwaway test nodes only).
#
# `scripts/cassandra-node.sh --wait DIR CQL_PORT PID` waits (up to 240 s) until the node of
# process PID, started with DIR, listens on CQL_PORT; prints its log and fails otherwise.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
if [ "${1:-}" = "--wait" ]; then
  dir="$2" port="$3" pid="$4"
  deadline=$((SECONDS + 240))
  until (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do
    if ! kill -0 "$pid" 2>/dev/null || [ "$SECONDS" -gt "$deadline" ]; then
      echo "cassandra-node: the node did not start; its log:" >&2
      tail -n 40 "$dir/node.out" "$dir/logs/system.log" >&2 || true
      exit 1
    fi
    sleep 1
  done
  echo "cassandra-node: listening on 127.0.0.1:$port" >&2
  exit 0
fi
dir="${1:?usage: cassandra-node.sh DIR CQL_PORT [STORAGE_PORT]}"
cql="${2:?CQL port}"
storage="${3:-0}"
tools="${MSGXC_TOOLS_DIR:-$here/.tools}/cassandra"
lib="$tools/lib"
if [ ! -f "$lib/.complete" ] || [ ! -f "$tools/java_home" ]; then
  echo "cassandra-node: no Cassandra in $lib; run scripts/setup-tools.sh --cassandra" >&2
  exit 2
fi
java="$(cat "$tools/java_home")/bin/java"
jamm="$(ls "$lib"/jamm-*.jar | head -n1)"
if [ "$storage" = 0 ]; then
  storage=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
fi
mkdir -p "$dir/data" "$dir/commitlog" "$dir/saved_caches" "$dir/hints" "$dir/cdc_raw" "$dir/logs"
cat > "$dir/cassandra.yaml" <<YAML
cluster_name: msgxc
num_tokens: 1
initial_token: 0
partitioner: org.apache.cassandra.dht.Murmur3Partitioner
endpoint_snitch: SimpleSnitch
auto_bootstrap: false
seed_provider:
  - class_name: org.apache.cassandra.locator.SimpleSeedProvider
    parameters:
      - seeds: "127.0.0.1:$storage"
listen_address: 127.0.0.1
rpc_address: 127.0.0.1
storage_port: $storage
native_transport_port: $cql
data_file_directories:
  - $dir/data
commitlog_directory: $dir/commitlog
saved_caches_directory: $dir/saved_caches
hints_directory: $dir/hints
cdc_raw_directory: $dir/cdc_raw
commitlog_sync: periodic
commitlog_sync_period: 10000ms
auto_snapshot: false
concurrent_compactors: 1
write_request_timeout: 10000ms
read_request_timeout: 10000ms
range_request_timeout: 10000ms
counter_write_request_timeout: 10000ms
cas_contention_timeout: 5000ms
truncate_request_timeout: 60000ms
# Cassandra's defaults, stated: what a user's node refuses, the tests' node refuses too.
batch_size_warn_threshold: 5KiB
batch_size_fail_threshold: 50KiB
YAML
cat > "$dir/logback.xml" <<XML
<configuration>
  <appender name="FILE" class="ch.qos.logback.core.FileAppender">
    <file>$dir/logs/system.log</file>
    <encoder><pattern>%-5level [%thread] %date{ISO8601} %F:%L - %msg%n</pattern></encoder>
  </appender>
  <root level="INFO"><appender-ref ref="FILE"/></root>
</configuration>
XML
test_flags=()
if [ "${MSGXC_CASSANDRA_TEST:-0}" = 1 ]; then
  test_flags=(-Dcassandra.skip_wait_for_gossip_to_settle=0 -Dcassandra.unsafesystem=true
              -Dcassandra.skip_sync=true -Dcassandra.ring_delay_ms=0)
fi
heap="${MSGXC_CASSANDRA_HEAP:-1G}"
exports=(java.base/jdk.internal.misc java.management.rmi/com.sun.jmx.remote.internal.rmi
         java.management/com.sun.jmx.remote.security java.rmi/sun.rmi.registry java.rmi/sun.rmi.server
         java.sql/java.sql java.base/java.lang.ref jdk.unsupported/sun.misc jdk.attach/sun.tools.attach
         jdk.compiler/com.sun.tools.javac.file)
opens=(java.base/java.lang.module java.base/jdk.internal.loader java.base/jdk.internal.ref
       java.base/jdk.internal.reflect java.base/jdk.internal.math java.base/jdk.internal.module
       java.base/jdk.internal.util.jar jdk.management/com.sun.management.internal java.base/sun.nio.ch
       java.base/java.io java.base/java.lang.reflect java.base/java.lang java.base/java.util
       java.base/java.nio jdk.compiler/com.sun.tools.javac)
module_flags=()
for e in "${exports[@]}"; do module_flags+=("--add-exports=$e=ALL-UNNAMED"); done
for o in "${opens[@]}"; do module_flags+=("--add-opens=$o=ALL-UNNAMED"); done
exec "$java" -cp "$lib/*" \
  "-Xms$heap" "-Xmx$heap" -Xss256k -XX:+UseG1GC -XX:+ExitOnOutOfMemoryError \
  -XX:+PerfDisableSharedMem -XX:ActiveProcessorCount=2 \
  -Djava.net.preferIPv4Stack=true -Dchronicle.analytics.disable=true -Djdk.attach.allowAttachSelf=true \
  "${module_flags[@]}" \
  -Dio.netty.tryReflectionSetAccessible=true -Dio.netty.allocator.useCacheForAllThreads=true \
  -Dio.netty.allocator.maxOrder=11 \
  "-javaagent:$jamm" \
  -Dcassandra-foreground=yes "-Dcassandra.config=file://$dir/cassandra.yaml" \
  "-Dcassandra.storagedir=$dir" "-Dcassandra.logdir=$dir/logs" \
  "-Dlogback.configurationFile=$dir/logback.xml" \
  "${test_flags[@]}" \
  org.apache.cassandra.service.CassandraDaemon
