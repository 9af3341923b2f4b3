# dm-userspace under load: fio randrw with verify over more than 10,000
# blocks with several jobs while max_mappings forces evictions, then ext4
# on top (flushes become commits). Sourced after lib.sh.
L=$DMU_OUT
SZ=$((48 * 2048))	# 48 MiB = 12288 blocks of 4 KiB

# noflush suspend with no daemon: the waiting bio is requeued, not failed,
# and completes once a daemon answers after resume.
dmsetup create nf --table "0 $SZ userspace nf 8 /dev/vda"
blk /dev/mapper/nf 4k 3 >/tmp/nf-read &
RD=$!
wait_for bash -c "[ \$(dmsetup status nf | awk '{print \$6}') = 1 ]"
check "noflush suspend with a pending bio and no daemon does not hang" timeout 30 dmsetup suspend --noflush nf
check "noflush suspend requeued the bio instead of failing it" kill -0 $RD
dmsetup resume nf
start_resp nf $L/nf.log
wait $RD
check "requeued bio completes once a daemon answers" eq $? 0
stop_resp
dmsetup remove nf
dmsetup create fio --table "0 $SZ userspace fio 8 2 max_mappings 4096 /dev/vda"
start_resp fio $L/fio.log
fio --name=rw --filename=/dev/mapper/fio --rw=randrw --bs=4k --direct=1 \
	--ioengine=libaio --iodepth=16 --numjobs=4 --size=12M --offset_increment=12M \
	--verify=crc32c --verify_fatal=1 --group_reporting --output=$L/fio-randrw.txt
check "fio randrw + verify, 4 jobs over 12288 blocks" eq $? 0
fio --name=wv --filename=/dev/mapper/fio --rw=randwrite --bs=4k --direct=1 \
	--ioengine=libaio --iodepth=16 --numjobs=4 --size=12M --offset_increment=12M \
	--verify=crc32c --verify_fatal=1 --group_reporting --output=$L/fio-verify.txt
check "fio randwrite then verify of every block" eq $? 0
check "more than 10,000 requests answered" ge "$(st fio misses)" 10000
check "max_mappings respected" bash -c "[ \$(dmsetup status fio | awk '{print \$11}') -le 4096 ]"
check "mappings were evicted" ge "$(st fio evictions)" 1
check "nothing left pending" eq "$(st fio pending)" 0
mkfs.ext4 -q -F /dev/mapper/fio
mkdir -p /mnt/fio
mount /dev/mapper/fio /mnt/fio
pattern /tmp/big 4194304
cp /tmp/big /mnt/fio/big
sync -f /mnt/fio/big
check "ext4 fsync went through commits" ge "$(st fio commits)" 1
umount /mnt/fio
echo 3 >/proc/sys/vm/drop_caches
mount /dev/mapper/fio /mnt/fio
check "ext4 file reads back after remount" cmp /tmp/big /mnt/fio/big
umount /mnt/fio
check "ext4 is clean" e2fsck -fn /dev/mapper/fio
stop_resp
check "remove after load" dmsetup remove fio

# The kernel's own copy on first write under load: 8 KiB blocks read from
# vdb until fio's 4 KiB writes make the kernel copy and allocate them on
# vda, with runs, evictions and reads of blocks being allocated at once.
dmsetup create cwf --table "0 $SZ userspace cwf 16 2 max_mappings 2048 /dev/vda /dev/vdb"
start_resp cwf $L/cwf.log -m cow=1 -R 64
fio --name=cw --filename=/dev/mapper/cwf --rw=randrw --bs=4k --direct=1 \
	--ioengine=libaio --iodepth=16 --numjobs=4 --size=12M --offset_increment=12M \
	--verify=crc32c --verify_fatal=1 --group_reporting --output=$L/fio-cow.txt
check "COW: fio randrw + verify, 4 jobs over 6144 blocks" eq $? 0
check "COW: the kernel allocated thousands of blocks" ge "$(grep -c '^allocated ' $L/cwf.log)" 3000
check "COW: and copied most of them" ge "$(st cwf copies)" 2000
check "COW: nothing left pending" eq "$(st cwf pending)" 0
stop_resp
check "COW: remove after load" dmsetup remove cwf
