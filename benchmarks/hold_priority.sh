#!/bin/bash
# Hold a timed benchmark (the process ROOT and all it starts, Ray workers included) at nice -5 while other
# jobs share the machine: Ray runs trial workers at nice 15, the same as other niced jobs. Usage: hold_priority.sh ROOT_PID
root=$1
while kill -0 $root 2>/dev/null; do
  pids=$(ps -eo pid,ppid | awk -v r=$root 'BEGIN{a[r]=1} {p[$1]=$2} END{changed=1; while(changed){changed=0; for(i in p) if(!(i in a) && (p[i] in a)){a[i]=1; changed=1}} for(i in a) print i}')
  for p in $pids; do renice -n -5 -p $p >/dev/null 2>&1; done
  sleep 3
done
