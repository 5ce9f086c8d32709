# shellcheck shell=bash
# Apache Kafka 4.x in KRaft mode: one node that is both broker and controller, on 127.0.0.1:9092.
# The broker's jars come from Maven Central (infra/kafka/pom.xml, fetched into .cache/kafka-libs).
# Sourced by infra/stack.sh after lib/common.sh.

KAFKA_PORT=9092
KAFKA_CONTROLLER_PORT=9093
KAFKA_LIBS="$CACHE_DIR/kafka-libs"
KAFKA_DIR="$RUN_DIR/kafka"
KAFKA_HEAP="${REELSTREAM_KAFKA_HEAP:--Xms256m -Xmx512m}"

kafka_marker() { echo "$KAFKA_LIBS/"; }

kafka_write_config() {
    install -d -m 0755 "$KAFKA_DIR"
    cat >"$KAFKA_DIR/server.properties" <<EOF
# Written by infra/lib/kafka.sh at every 'make up'; edit that file, not this one.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$KAFKA_DIR/data

# Topics are created on purpose by infra/create_topics.py, never by a typo in a producer.
auto.create.topics.enable=false
num.partitions=1
# One node: every internal topic must accept replication factor 1 and an ISR of 1, or the
# coordinators (groups, transactions, share groups) never come up.
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=10
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
# A new consumer group rebalances at once instead of waiting 3 s for more members: faster tests.
group.initial.rebalance.delay.ms=0
EOF
}

# The JVM command line shared by the storage tool and the broker, in the array KAFKA_JVM.
kafka_jvm() {
    # The classpath wildcard is expanded by the JVM; the log4j2 file keeps the broker's log to INFO.
    # shellcheck disable=SC2206 # KAFKA_HEAP holds several options on purpose.
    KAFKA_JVM=("$(java_bin)" $KAFKA_HEAP -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -Djava.awt.headless=true
        -Dlog4j2.configurationFile="$INFRA_DIR/kafka/log4j2.properties" -cp "$KAFKA_LIBS/*")
}

kafka_java() {
    kafka_jvm
    "${KAFKA_JVM[@]}" "$@"
}

# KRaft needs its storage formatted once with a cluster id before the first start.
kafka_format() {
    [[ -f "$KAFKA_DIR/data/meta.properties" ]] && return 0
    local cluster_id
    # The tool prints log lines too; the id is the one line of 22 base64url characters.
    cluster_id="$(kafka_java kafka.tools.StorageTool random-uuid 2>>"$LOG_DIR/kafka.log" \
        | grep -E '^[A-Za-z0-9_-]{22}$' | tail -n 1)" || true
    [[ -n "$cluster_id" ]] || die "kafka: could not generate a cluster id (log: $LOG_DIR/kafka.log)"
    log "kafka: formatting storage in $KAFKA_DIR/data (cluster id $cluster_id)"
    kafka_java kafka.tools.StorageTool format --ignore-formatted -t "$cluster_id" \
        -c "$KAFKA_DIR/server.properties" >>"$LOG_DIR/kafka.log" 2>&1 || {
        show_log_tail kafka
        die "kafka: formatting storage failed (log: $LOG_DIR/kafka.log)"
    }
}

# Starts the broker unless it already runs; readiness is checked by kafka_wait.
kafka_start() {
    local pid
    if pid="$(running_pid kafka "$(kafka_marker)")"; then
        log "kafka: already running (pid $pid)"
        return 0
    fi
    require_free_ports kafka "$KAFKA_PORT" "$KAFKA_CONTROLLER_PORT"
    kafka_write_config
    kafka_format
    log "kafka: starting"
    kafka_jvm
    start_detached kafka "${KAFKA_JVM[@]}" kafka.Kafka "$KAFKA_DIR/server.properties"
}

kafka_wait() {
    local pid
    pid="$(<"$(pid_file kafka)")"
    wait_until kafka "$pid" port_open "$KAFKA_PORT"
    # An open port is not a working broker: create_topics.py waits until the broker answers metadata
    # requests and accepts topic creation, then makes every contract topic.
    run_python infra/create_topics.py --wait-timeout "$READY_TIMEOUT" \
        || die "kafka: the contract topics could not be created (see above; log: $LOG_DIR/kafka.log)"
    log "kafka: ready on 127.0.0.1:$KAFKA_PORT (controller 127.0.0.1:$KAFKA_CONTROLLER_PORT)"
}

# SIGTERM makes the broker shut down cleanly, so the next start needs no log recovery.
kafka_down() { stop_part kafka "$(kafka_marker)" TERM; }

kafka_status() {
    local pid
    if pid="$(running_pid kafka "$(kafka_marker)")"; then
        if port_open "$KAFKA_PORT"; then
            echo "kafka     up    pid $pid  127.0.0.1:$KAFKA_PORT  data $KAFKA_DIR/data"
        else
            echo "kafka     starting or unhealthy  pid $pid"
        fi
    else
        echo "kafka     down"
    fi
}
