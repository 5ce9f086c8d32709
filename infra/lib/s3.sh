# shellcheck shell=bash
# The S3 API: S3Proxy (org.gaul:s3proxy from Maven Central) with its filesystem backend, on
# 127.0.0.1:9000. It checks SigV2/SigV4 signatures and presigned-URL expiry like AWS does.
# Sourced by infra/stack.sh after lib/common.sh.

S3_PORT=9000
S3_ACCESS_KEY=reelstream
S3_SECRET_KEY=reelstream-secret
S3_REGION=us-east-1
S3_LIBS="$CACHE_DIR/s3proxy-libs"
S3_DIR="$RUN_DIR/s3proxy"
S3_DATA="$RUN_DIR/s3"
S3_HEAP="${REELSTREAM_S3_HEAP:--Xmx256m}"

s3_marker() { echo "$S3_LIBS/"; }

s3_write_config() {
    install -d -m 0755 "$S3_DIR" "$S3_DATA"
    # Holds the local secret: readable by root only.
    install -m 0600 /dev/null "$S3_DIR/s3proxy.properties"
    cat >"$S3_DIR/s3proxy.properties" <<EOF
# Written by infra/lib/s3.sh at every 'make up'; edit that file, not this one.
s3proxy.endpoint=http://127.0.0.1:$S3_PORT
# Every request must be signed with this key pair (SigV4, or SigV2 for old clients); presigned URLs
# are checked for their signature and their expiry.
s3proxy.authorization=aws-v2-or-v4
s3proxy.identity=$S3_ACCESS_KEY
s3proxy.credential=$S3_SECRET_KEY
jclouds.provider=filesystem
jclouds.identity=$S3_ACCESS_KEY
jclouds.credential=$S3_SECRET_KEY
jclouds.filesystem.basedir=$S3_DATA
jclouds.region=$S3_REGION
EOF
}

# Starts S3Proxy unless it already runs; readiness is checked by s3_wait.
s3_start() {
    local pid
    if pid="$(running_pid s3 "$(s3_marker)")"; then
        log "s3: already running (pid $pid)"
        return 0
    fi
    require_free_ports s3 "$S3_PORT"
    s3_write_config
    log "s3: starting"
    # shellcheck disable=SC2086 # S3_HEAP holds several options on purpose.
    start_detached s3 "$(java_bin)" $S3_HEAP -XX:+UseSerialGC -Djava.awt.headless=true \
        -Dlogback.configurationFile="$INFRA_DIR/s3proxy/logback.xml" -cp "$S3_LIBS/*" \
        org.gaul.s3proxy.Main --properties "$S3_DIR/s3proxy.properties"
}

s3_wait() {
    local pid
    pid="$(<"$(pid_file s3)")"
    wait_until s3 "$pid" port_open "$S3_PORT"
    # create_bucket.py retries until S3 answers a signed request, then makes the bucket if missing.
    run_python infra/create_bucket.py --wait-timeout "$READY_TIMEOUT" \
        || die "s3: the bucket could not be created (see above; log: $LOG_DIR/s3.log)"
    log "s3: ready on http://127.0.0.1:$S3_PORT (region $S3_REGION, data $S3_DATA)"
}

s3_down() { stop_part s3 "$(s3_marker)" TERM; }

s3_status() {
    local pid
    if pid="$(running_pid s3 "$(s3_marker)")"; then
        if port_open "$S3_PORT"; then
            echo "s3        up    pid $pid  http://127.0.0.1:$S3_PORT  data $S3_DATA"
        else
            echo "s3        starting or unhealthy  pid $pid"
        fi
    else
        echo "s3        down"
    fi
}
