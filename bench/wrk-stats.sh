# Sourced by the bench scripts: wrk's --latency output on stdin ->
# "p50_us p99_us requests_per_second non2xx socket_errors".
wrk_stats() {
  awk '
    function us(v) { if (v ~ /us$/) return v+0; if (v ~ /ms$/) return v*1000; if (v ~ /s$/) return v*1000000; return v }
    $1=="50%" {p50=us($2)} $1=="99%" {p99=us($2)} $1=="Requests/sec:" {rps=$2}
    /Non-2xx/ {bad=$NF} /Socket errors/ {gsub(",", ""); errs=$4+$6+$8+$10}
    END { printf "%d %d %d %d %d\n", p50, p99, rps, bad+0, errs+0 }'
}
