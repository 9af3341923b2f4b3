# Runs in every guest of dmu-e2e (busybox sh, after /dev/xvda appears).
# The guest's name (dmu.guest= on the kernel command line) picks the job:
#   io  : writes a numbered line into a fresh 64 KiB block every ~0.5 s for
#         a while (each write is a dm-userspace miss, so it needs cowd), then
#         reads them all back; dom0 kills and restarts daemons meanwhile.
#   else: writes "DMU-XEN-PATTERN-<name>" into sector 4097 (the middle of a
#         block: the rest of the block must be copied from the base) and
#         powers off; dom0 reads it back through a new dmu attach.
n=$(sed -n 's/.*dmu.guest=\([^ ]*\).*/\1/p' /proc/cmdline)
[ -b /dev/xvda ] || { echo "no /dev/xvda"; exit 1; }

if [ "$n" = io ]; then
	count=${IO_COUNT:-100}
	echo "IO-START count=$count"
	i=0
	while [ $i -lt $count ]; do
		printf 'IO-BLOCK-%d\n' $i >/p
		# 128 sectors = one 64 KiB dscow block per write, past the first 8 MiB.
		dd if=/p of=/dev/xvda bs=512 seek=$((16384 + i * 128)) conv=sync,fsync 2>/dev/null ||
			{ echo "IO-WRITE-FAILED $i"; exit 3; }
		echo "IO-WROTE $i"
		sleep 0.5
		i=$((i + 1))
	done
	echo 3 >/proc/sys/vm/drop_caches
	i=0
	while [ $i -lt $count ]; do
		got=$(dd if=/dev/xvda bs=512 skip=$((16384 + i * 128)) count=1 2>/dev/null | tr -d '\000')
		[ "$got" = "IO-BLOCK-$i" ] || { echo "IO-MISMATCH $i: $got"; exit 4; }
		i=$((i + 1))
	done
	echo "IO-OK $count"
	exit 0
fi

printf 'DMU-XEN-PATTERN-%s\n' "$n" >/pattern
dd if=/pattern of=/dev/xvda bs=512 seek=4097 conv=sync,fsync || exit 2
echo 3 >/proc/sys/vm/drop_caches
got=$(dd if=/dev/xvda bs=512 skip=4097 count=1 2>/dev/null | tr -d '\000')
[ "$got" = "DMU-XEN-PATTERN-$n" ] || { echo "read back '$got'"; exit 5; }
echo "wrote the pattern for $n"
