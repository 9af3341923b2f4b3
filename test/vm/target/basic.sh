# dm-userspace scenarios that need one data disk (/dev/vda) and a base
# disk (/dev/vdb). Sourced after lib.sh in one guest boot.
L=$DMU_OUT
SZ=131072	# 64 MiB targets

# --- hits, misses, table, data path, flush/commit, invalidation --------
T="0 $SZ userspace hm 8 254:0"
dmsetup create hm --table "0 $SZ userspace hm 8 /dev/vda"
check "control device /dev/dmu/hm exists" test -c /dev/dmu/hm
check "TABLE status is the constructor line" eq "$(dmsetup table hm)" "$T"
check "no daemon yet" eq "$(st hm daemon)" waiting
start_resp hm $L/hm.log
check "daemon connected" eq "$(st hm daemon)" connected
check "FEATURES (id 0) is the first message" bash -c "grep -v '^batch' $L/hm.log | head -1 | grep -q '^features id=0 nr_blocks=16384 bs=8 devs=1'"
check "second opener gets EBUSY" bash -c 'if (exec 3<>/dev/dmu/hm) 2>/tmp/busy.txt; then exit 1; fi; grep -q busy /tmp/busy.txt'
dd if=/dev/mapper/hm of=/dev/null bs=4k count=16 iflag=direct status=none
check "first read: 16 misses" eq "$(st hm misses)" 16
check "first read: 0 hits" eq "$(st hm hits)" 0
check "first read: 16 mapped" eq "$(st hm mapped)" 16
dd if=/dev/mapper/hm of=/dev/null bs=4k count=16 iflag=direct status=none
check "second read: 16 hits" eq "$(st hm hits)" 16
check "second read: still 16 misses" eq "$(st hm misses)" 16
check "second read did not reach userspace" eq "$(grep -c '^map ' $L/hm.log)" 16
pattern /tmp/d1 1048576
dd if=/tmp/d1 of=/dev/mapper/hm bs=64k seek=4 oflag=direct status=none
check "write landed on the data device" cmp <(dd if=/dev/vda bs=64k skip=4 count=16 status=none) /tmp/d1
check "write reads back through the target" cmp <(dd if=/dev/mapper/hm bs=64k skip=4 count=16 iflag=direct status=none) /tmp/d1
blockdev --flushbufs /dev/mapper/hm
sync /dev/mapper/hm
dd if=/dev/null of=/dev/mapper/hm conv=fsync status=none
check "fsync produced a COMMIT" grep -q '^commit ' $L/hm.log
# 16 read + 256 write replies, no copy-first running: the flush covers all.
check "the COMMIT covers every reply so far" bash -c "grep '^commit ' $L/hm.log | tail -n 1 | grep -q ' covered=272 alloc=0\$'"
check "flushes counted" ge "$(st hm flushes)" 1
check "commits counted" ge "$(st hm commits)" 1
check "invalidate message accepted" dmsetup message hm 0 invalidate 0 8
check "invalidate dropped 8 mappings" eq "$(st hm mapped)" $((16 + 256 - 8))
dd if=/dev/mapper/hm of=/dev/null bs=4k count=16 iflag=direct status=none
check "invalidated blocks asked again" eq "$(st hm misses)" $((16 + 256 + 8))
check "invalidate beyond the end rejected" bash -c '! dmsetup message hm 0 invalidate 16000 1000 2>/dev/null'
check "invalidate count 0 rejected" bash -c '! dmsetup message hm 0 invalidate 0 0 2>/dev/null'
check "unknown message rejected" bash -c '! dmsetup message hm 0 frobnicate 2>/dev/null'
stop_resp
check "daemon gone: waiting" eq "$(st hm daemon)" waiting
dd if=/dev/mapper/hm of=/dev/null bs=4k count=16 iflag=direct status=none
check "remembered mappings serve without a daemon" eq "$(st hm misses)" $((16 + 256 + 8))
# daemon-side invalidation, answered by INVALIDATE_DONE
start_resp hm $L/hm2.log -I 0,16 -G
wait_for grep -q '^features id=77' $L/hm2.log
check "GET_FEATURES answered by FEATURES with its id" grep -q '^features id=77 nr_blocks=16384' $L/hm2.log
# Reply numbers go on across daemons: 272 + the 8 invalidated blocks asked again.
check "a new daemon learns the last reply number" grep -q '^features id=0 .* reply_seq=280 ' $L/hm2.log
wait_for grep -q '^inval_done 4242 0 16' $L/hm2.log
check "INVALIDATE answered by INVALIDATE_DONE" grep -q '^inval_done 4242 0 16' $L/hm2.log
check "daemon invalidate dropped the mappings" eq "$(st hm mapped)" $((256 - 0))
stop_resp
check "remove without a daemon" dmsetup remove hm
check "control device gone after remove" test ! -e /dev/dmu/hm

# --- a length that is not a multiple of the block size ----------------
# 131069 sectors: 16384 blocks, the last (16383, at sector 131064) has 5.
SL=$((SZ - 3))
LB=$((SZ - 8))
dmsetup create sl --table "0 $SL userspace sl 8 /dev/vda /dev/vdb"
check "short last block: the disk has the table's length" eq "$(blockdev --getsz /dev/mapper/sl)" $SL
start_resp sl $L/sl.log
pattern /tmp/sl 2560
dd if=/tmp/sl of=/dev/mapper/sl bs=2560 seek=$((LB * 512)) oflag=direct,seek_bytes status=none
check "short last block: a write of all its sectors is a whole-block write" grep -qE '^map [0-9]+ 16383 3$' $L/sl.log
check "short last block: reads back" cmp <(dd if=/dev/mapper/sl bs=2560 count=1 skip=$((LB * 512)) iflag=direct,skip_bytes status=none) /tmp/sl
check "short last block: landed on the data device" cmp <(dd if=/dev/vda bs=2560 count=1 skip=$((LB * 512)) iflag=direct,skip_bytes status=none) /tmp/sl
check "short last block: I/O past the end fails" fails dd if=/dev/zero of=/dev/mapper/sl bs=512 count=1 seek=$SL oflag=direct status=none
stop_resp
dmsetup remove sl
pattern /tmp/slb 2560
dd if=/tmp/slb of=/dev/vdb bs=2560 seek=$((LB * 512)) oflag=direct,seek_bytes status=none
dmsetup create sc --table "0 $SL userspace sc 8 /dev/vda /dev/vdb"
start_resp sc $L/sc.log -m copy=1
pattern /tmp/slp 512
dd if=/tmp/slp of=/dev/mapper/sc bs=512 seek=$((LB + 1)) oflag=direct status=none
{ head -c 512 /tmp/slb; cat /tmp/slp; tail -c 1536 /tmp/slb; } >/tmp/slx
check "short last block: copy-first copies its 5 sectors around a partial write" cmp <(dd if=/dev/mapper/sc bs=2560 count=1 skip=$((LB * 512)) iflag=direct,skip_bytes status=none) /tmp/slx
check "short last block: copy counted" eq "$(st sc copies)" 1
stop_resp
dmsetup remove sc
# The same block first written under DMU_FEATURE_COW: the kernel reads its
# 5 sectors, lays the write over them and writes the 5 back.
dmsetup create sw --table "0 $SL userspace sw 8 /dev/vda /dev/vdb"
start_resp sw $L/sw.log -m cow=1
pattern /tmp/slq 512
dd if=/tmp/slq of=/dev/mapper/sw bs=512 seek=$((LB + 3)) oflag=direct status=none
{ head -c 1536 /tmp/slb; cat /tmp/slq; tail -c 512 /tmp/slb; } >/tmp/sly
check "short last block: a first write is merged into its 5 sectors" cmp <(dd if=/dev/mapper/sw bs=2560 count=1 skip=$((LB * 512)) iflag=direct,skip_bytes status=none) /tmp/sly
check "short last block: ... and lands on the data device" cmp <(dd if=/dev/vda bs=2560 count=1 skip=$((LB * 512)) iflag=direct,skip_bytes status=none) /tmp/sly
check "short last block: the daemon is told" wait_for grep -qE '^allocated [0-9]+ 16383 0 131064 1$' $L/sw.log
stop_resp
dmsetup remove sw

# --- bios over several blocks: remapped whole, or cut per block ------
# (4 KiB blocks: map remaps at most 32 blocks of a bio and cuts the
# rest off for dm core to map again, so a 1 MiB bio goes as 128 KiB
# pieces.)
dmsetup create mb --table "0 $SZ userspace mb 8 /dev/vda"
start_resp mb $L/mb.log
pattern /tmp/m1 1048576
dd if=/tmp/m1 of=/dev/mapper/mb bs=1M seek=8 oflag=direct status=none
check "cold 1 MiB write: one request per block" eq "$(grep -c '^map ' $L/mb.log)" 256
check "cold 1 MiB write landed" cmp <(dd if=/dev/vda bs=1M skip=8 count=1 iflag=direct status=none) /tmp/m1
h0=$(st mb hits)
check "warm 1 MiB read is right" cmp <(dd if=/dev/mapper/mb bs=1M skip=8 count=1 iflag=direct status=none) /tmp/m1
check "warm 1 MiB read: a hit per block" eq "$(st mb hits)" $((h0 + 256))
check "warm 1 MiB read: no request" eq "$(grep -c '^map ' $L/mb.log)" 256
check "unaligned read across a block boundary" cmp <(dd if=/dev/mapper/mb bs=6144 count=1 skip=$((8 * 1048576 + 2048)) iflag=direct,skip_bytes status=none) <(tail -c +2049 /tmp/m1 | head -c 6144)
pattern /tmp/m2 6144
dd if=/tmp/m2 of=/dev/mapper/mb bs=6144 seek=$((8 * 1048576 + 10240)) oflag=direct,seek_bytes status=none
{ head -c 10240 /tmp/m1; cat /tmp/m2; tail -c +16385 /tmp/m1; } >/tmp/m3
check "unaligned write across a block boundary" cmp <(dd if=/dev/vda bs=1M skip=8 count=1 iflag=direct status=none) /tmp/m3
dmsetup message mb 0 invalidate 2100 1
m0=$(st mb misses)
check "run with a forgotten block in it reads right" cmp <(dd if=/dev/mapper/mb bs=1M skip=8 count=1 iflag=direct status=none) /tmp/m3
check "only the forgotten block is asked again" eq "$(st mb misses)" $((m0 + 1))
stop_resp
dmsetup remove mb
dmsetup create sw --table "0 $SZ userspace sw 8 /dev/vda"
start_resp sw $L/sw.log -m swap
pattern /tmp/s1 262144
dd if=/tmp/s1 of=/dev/mapper/sw bs=256k seek=64 oflag=direct status=none
check "scattered run: block 4096 landed at 4097" cmp <(blk /dev/vda 4k 4097) <(dd if=/tmp/s1 bs=4k count=1 status=none)
check "scattered run: block 4097 landed at 4096" cmp <(blk /dev/vda 4k 4096) <(dd if=/tmp/s1 bs=4k skip=1 count=1 status=none)
h0=$(st sw hits)
check "scattered run: warm 256 KiB read is right" cmp <(dd if=/dev/mapper/sw bs=256k skip=64 count=1 iflag=direct status=none) /tmp/s1
check "scattered run: a hit per block" eq "$(st sw hits)" $((h0 + 64))
stop_resp
dmsetup remove sw

# --- read-only mapping, write faults ----------------------------------
pattern /tmp/a 4096
pattern /tmp/b 4096
dd if=/tmp/a of=/dev/vda bs=4k seek=4 conv=notrunc oflag=direct status=none
dmsetup create ro --table "0 $SZ userspace ro 8 /dev/vda"
start_resp ro $L/ro.log -m ro
check "read through a read-only mapping" cmp <(blk /dev/mapper/ro 4k 4) /tmp/a
dd if=/tmp/b of=/dev/mapper/ro bs=4k seek=4 oflag=direct status=none
check "write to a read-only mapping faulted" bash -c "grep -E '^map [0-9]+ 4 ' $L/ro.log | tail -1 | awk '{ exit !(\$4 == 7) }'"
check "two requests for the block (read, fault)" eq "$(grep -cE '^map [0-9]+ 4 ' $L/ro.log)" 2
check "faulted write landed" cmp <(blk /dev/vda 4k 4) /tmp/b
check "remove with the daemon connected" dmsetup remove ro
wait_for grep -q '^eof' $L/ro.log
check "daemon reads 0 (EOF) after remove" grep -q '^eof' $L/ro.log
wait "$RP" 2>/dev/null

# --- temporary: asked again --------------------------------------------
dmsetup create tp --table "0 $SZ userspace tp 8 /dev/vda"
start_resp tp $L/tp.log -m temp
blk /dev/mapper/tp 4k 4 >/tmp/t1
blk /dev/mapper/tp 4k 4 >/tmp/t2
check "temporary mapping serves the read" cmp /tmp/t1 /tmp/b
check "temporary mapping is asked again" eq "$(grep -cE '^map [0-9]+ 4 ' $L/tp.log)" 2
check "temporary mapping not remembered" eq "$(st tp mapped)" 0
stop_resp
dmsetup remove tp

# --- ordered release: later bios wait behind the block's request -------
# The data device is a RAM disk (brd): it copies each bio as it is
# submitted, so its contents show the order the target released them in. A
# virtio disk runs concurrent writes to one sector in any order (QEMU's
# worker threads), which made "last write wins" fail now and then.
modprobe brd rd_nr=1 rd_size=$((SZ / 2))
pattern /tmp/o1 4096
pattern /tmp/o2 4096
pattern /tmp/o3 4096
dmsetup create od --table "0 $SZ userspace od 8 /dev/ram0"
WR=""
for f in o1 o2 o3; do
	dd if=/tmp/$f of=/dev/mapper/od bs=4k seek=5 oflag=direct status=none &
	WR="$WR $!"
	sleep 1
done
blk /dev/mapper/od 4k 5 >/tmp/o-read &
RD=$!
sleep 1
check "one request per block in flight" eq "$(st od pending)" 1
start_resp od $L/od.log
wait $RD $WR
check "only one request sent for the block" eq "$(grep -cE '^map [0-9]+ 5 ' $L/od.log)" 1
check "released in order: last write wins" cmp <(blk /dev/ram0 4k 5) /tmp/o3
check "released in order: read after the writes sees the last" cmp /tmp/o-read /tmp/o3
stop_resp
dmsetup remove od
rmmod brd

# --- copy-first from a base device, zero and error answers -------------
BS=128	# 64 KiB blocks
pattern /tmp/base 1048576
dd if=/tmp/base of=/dev/vdb bs=1M oflag=direct status=none
dd if=/dev/zero of=/dev/vda bs=1M count=1 oflag=direct status=none
dmsetup create cf --table "0 $SZ userspace cf $BS /dev/vda /dev/vdb"
start_resp cf $L/cf.log -m copy=1
check "read maps onto the base device" cmp <(blk /dev/mapper/cf 64k 2) <(dd if=/tmp/base bs=64k skip=2 count=1 status=none)
pattern /tmp/p 4096
cp /tmp/base /tmp/expect
dd if=/tmp/p of=/tmp/expect bs=4k seek=$((3 * 16 + 2)) conv=notrunc status=none
dd if=/tmp/p of=/dev/mapper/cf bs=4k seek=$((3 * 16 + 2)) oflag=direct status=none
check "copy-first: block reads back as base + partial write" cmp <(blk /dev/mapper/cf 64k 3) <(dd if=/tmp/expect bs=64k skip=3 count=1 status=none)
check "copy-first: data device holds base + partial write" cmp <(blk /dev/vda 64k 3) <(dd if=/tmp/expect bs=64k skip=3 count=1 status=none)
check "copy-first counted" eq "$(st cf copies)" 1
dd if=/tmp/p of=/tmp/expect bs=4k seek=$((2 * 16 + 15)) conv=notrunc status=none
dd if=/tmp/p of=/dev/mapper/cf bs=4k seek=$((2 * 16 + 15)) oflag=direct status=none
check "read-only base block faults and copies" cmp <(blk /dev/mapper/cf 64k 2) <(dd if=/tmp/expect bs=64k skip=2 count=1 status=none)
check "second copy counted" eq "$(st cf copies)" 2
# Eight writes at once into block 4: the first one's copy-first answer
# is merged with it, the others wait for it and land after.
check "copy-first: eight writes at once into one block all succeed" eq "$(pages_at_once /dev/mapper/cf 4 1 2 4 7 8 11 13 15)" 0
check "copy-first: ... the block reads back as base + all eight" cmp <(blk /dev/mapper/cf 64k 4) <(dd if=/tmp/expect bs=64k skip=4 count=1 status=none)
check "copy-first: ... and the data device holds it" cmp <(blk /dev/vda 64k 4) <(dd if=/tmp/expect bs=64k skip=4 count=1 status=none)
check "copy-first: ... one copy for the block" eq "$(st cf copies)" 3
stop_resp
dmsetup remove cf

# --- copy on first write done by the kernel (DMU_FEATURE_COW) ---------
# cow=1: every answer reads the base (vdb) until the first write, which
# the kernel allocates at the same place on vda itself.
dd if=/dev/zero of=/dev/vda bs=1M count=1 oflag=direct status=none
dmsetup create cw --table "0 $SZ userspace cw $BS /dev/vda /dev/vdb"
start_resp cw $L/cw.log -m cow=1 -R 16
check "FEATURES offers COW" grep -qE '^features id=0 .* bits=0x3ff$' $L/cw.log
check "COW: reads the base" cmp <(blk /dev/mapper/cw 64k 2) <(dd if=/tmp/base bs=64k skip=2 count=1 status=none)
check "COW: one answer for a run of 16 blocks" eq "$(st cw mapped)" 16
cp /tmp/base /tmp/expect
dd if=/tmp/p of=/tmp/expect bs=4k seek=$((3 * 16 + 2)) conv=notrunc status=none
dd if=/tmp/p of=/dev/mapper/cw bs=4k seek=$((3 * 16 + 2)) oflag=direct status=none
check "COW: first write asks no one" eq "$(st cw misses)" 1
check "COW: the kernel copied the block" eq "$(st cw copies)" 1
check "COW: block reads back as base + partial write" cmp <(blk /dev/mapper/cw 64k 3) <(dd if=/tmp/expect bs=64k skip=3 count=1 status=none)
check "COW: the data device holds base + partial write" cmp <(blk /dev/vda 64k 3) <(dd if=/tmp/expect bs=64k skip=3 count=1 status=none)
check "COW: the base is untouched" cmp <(blk /dev/vdb 64k 3) <(dd if=/tmp/base bs=64k skip=3 count=1 status=none)
check "COW: the daemon is told where (allocation 1)" wait_for grep -qE '^allocated [0-9]+ 3 0 384 1$' $L/cw.log
pattern /tmp/w 65536
dd if=/tmp/w of=/dev/mapper/cw bs=64k seek=5 oflag=direct status=none
check "COW: a whole-block write copies nothing" eq "$(st cw copies)" 1
check "COW: the whole-block write landed" cmp <(blk /dev/vda 64k 5) /tmp/w
check "COW: allocation 2 reported" wait_for grep -qE '^allocated [0-9]+ 5 0 640 2$' $L/cw.log
check "COW: still the one request" eq "$(st cw misses)" 1
dd if=/dev/null of=/dev/mapper/cw conv=fsync status=none
check "COW: the commit covers both allocations" bash -c "grep '^commit ' $L/cw.log | tail -n 1 | grep -q ' alloc=2\$'"
# An allocation the daemon never acknowledged goes to the next daemon.
stop_resp
start_resp cw $L/cw2.log -m cow=1 -R 16 -N
dd if=/tmp/p of=/dev/mapper/cw bs=4k seek=$((7 * 16)) oflag=direct status=none
wait_for grep -qE '^allocated [0-9]+ 7 0 896 3$' $L/cw2.log
stop_resp
start_resp cw $L/cw3.log -m cow=1 -R 16
check "COW: an unacknowledged allocation is sent again" wait_for grep -qE '^allocated [0-9]+ 7 0 896 3$' $L/cw3.log
check "COW: acknowledged allocations are not" bash -c "! grep -qE '^allocated [0-9]+ [35] ' $L/cw3.log"
check "COW: block 7 reads back" cmp <(blk /dev/mapper/cw 4k $((7 * 16))) /tmp/p
# A 256 KiB write over blocks 12-15 of the run: four whole-block
# allocations, numbered 4-7, reported in fewer messages than blocks.
pattern /tmp/w4 262144
dd if=/tmp/w4 of=/dev/mapper/cw bs=256k seek=3 oflag=direct status=none
check "COW: a sequential write's allocations are all reported" wait_for grep -qE '^allocated [0-9]+ 15 0 1920 7$' $L/cw3.log
check "COW: ... each at its place and number" grep -qE '^allocated [0-9]+ 13 0 1664 5$' $L/cw3.log
check "COW: ... in fewer reports than blocks" test "$(awk '$1 == "allocated" && $3 >= 12 && $3 <= 15 { print $2 }' $L/cw3.log | sort -u | wc -l)" -lt 4
check "COW: blocks 12-15 read back" cmp <(dd if=/dev/mapper/cw bs=256k skip=3 count=1 iflag=direct status=none) /tmp/w4
stop_resp
# Removal with an allocation nobody acknowledged frees it.
start_resp cw $L/cw4.log -m cow=1 -R 16 -N
dd if=/tmp/p of=/dev/mapper/cw bs=4k seek=$((9 * 16)) oflag=direct status=none
wait_for grep -qE '^allocated [0-9]+ 9 ' $L/cw4.log
stop_resp
check "COW: remove with an unacknowledged allocation" timeout 30 dmsetup remove cw

# --- a first partial write merged into its block (DMU_FEATURE_COW) ------
# The kernel reads the block from the base, lays the write over it and
# writes the block once; writes to the block arriving meanwhile wait and
# land after it. A FUA write is not merged: it copies first and waits for
# a commit, as before (a dsync write is FUA, or followed by a flush).
dd if=/dev/zero of=/dev/vda bs=1M count=1 oflag=direct status=none
dmsetup create cm --table "0 $SZ userspace cm $BS /dev/vda /dev/vdb"
start_resp cm $L/cm.log -m cow=1 -R 16
cp /tmp/base /tmp/expect
check "merge: eight writes at once into one new block all succeed" eq "$(pages_at_once /dev/mapper/cm 6 0 3 5 6 9 12 14 15)" 0
check "merge: the block reads back as base + all eight" cmp <(blk /dev/mapper/cm 64k 6) <(dd if=/tmp/expect bs=64k skip=6 count=1 status=none)
check "merge: ... and the data device holds it" cmp <(blk /dev/vda 64k 6) <(dd if=/tmp/expect bs=64k skip=6 count=1 status=none)
check "merge: the base is untouched" cmp <(blk /dev/vdb 64k 6) <(dd if=/tmp/base bs=64k skip=6 count=1 status=none)
check "merge: the daemon is told" wait_for grep -qE '^allocated [0-9]+ 6 0 768 ' $L/cm.log
check "merge: ... once" eq "$(grep -cE '^allocated [0-9]+ 6 ' $L/cm.log)" 1
check "merge: counted as the block's one copy" eq "$(st cm copies)" 1
c0=$(grep -c '^commit ' $L/cm.log || true)
dd if=/tmp/p of=/tmp/expect bs=4k seek=$((8 * 16 + 7)) conv=notrunc status=none
dd if=/tmp/p of=/dev/mapper/cm bs=4k seek=$((8 * 16 + 7)) oflag=direct,dsync status=none
check "merge: a dsync first write copies its block" eq "$(st cm copies)" 2
check "merge: ... and a commit covers it" test "$(grep -c '^commit ' $L/cm.log)" -gt "$c0"
check "merge: ... and reads back as base + write" cmp <(blk /dev/mapper/cm 64k 8) <(dd if=/tmp/expect bs=64k skip=8 count=1 status=none)
# Merge buffers are kept for the next merges (not cleared) and freed at
# suspend: blocks merged at once, then others through the kept buffers,
# then others after a suspend, each hold its own base + write.
check "merge: seven new blocks at once" eq "$(blocks_at_once /dev/mapper/cm 3 0 1 2 3 4 5 7)" 0
check "merge: three more through the kept buffers" eq "$(blocks_at_once /dev/mapper/cm 12 9 10 11)" 0
dmsetup suspend cm
dmsetup resume cm
check "merge: four more after a suspend" eq "$(blocks_at_once /dev/mapper/cm 0 12 13 14 15)" 0
check "merge: ... every block reads back as its base + writes" cmp <(dd if=/dev/mapper/cm bs=1M count=1 iflag=direct status=none) /tmp/expect
check "merge: ... and the data device holds them" cmp <(dd if=/dev/vda bs=1M count=1 iflag=direct status=none) /tmp/expect
check "merge: ... one copy per block" eq "$(st cm copies)" 16
stop_resp
dmsetup remove cm

tr '\0' '\377' </dev/zero | head -c 1048576 >/tmp/ff
dd if=/tmp/ff of=/dev/vda bs=1M oflag=direct status=none
dmsetup create zr --table "0 $SZ userspace zr 8 /dev/vda"
start_resp zr $L/zr.log -m zero
check "zero mapping reads zeros" cmp <(blk /dev/mapper/zr 4k 1) <(head -c 4096 /dev/zero)
blk /dev/mapper/zr 4k 1 >/dev/null
check "zero mapping is remembered" eq "$(grep -cE '^map [0-9]+ 1 ' $L/zr.log)" 1
dd if=/tmp/p of=/dev/mapper/zr bs=4k seek=1 oflag=direct status=none
check "write to a zero mapping faults to a writable one" cmp <(blk /dev/mapper/zr 4k 1) /tmp/p
# A warm read over zero mappings and a writable one in between: the
# whole-run path must step aside (zero mappings are served per block).
blk /dev/mapper/zr 64k 0 >/dev/null
check "warm multi-block read over zero + writable blocks" cmp <(blk /dev/mapper/zr 64k 0) <(cat <(head -c 4096 /dev/zero) /tmp/p <(head -c 57344 /dev/zero))
stop_resp
dmsetup remove zr

dmsetup create er --table "0 $SZ userspace er 8 /dev/vda"
start_resp er $L/er.log -m error=28
check "ERROR answer fails the read with its errno" bash -c "blk() { dd if=\$1 bs=4k skip=\$2 count=1 iflag=direct status=none; }; ! blk /dev/mapper/er 3 2>/tmp/er.txt && grep -q 'No space left' /tmp/er.txt"
check "ERROR answer is not remembered" eq "$(st er mapped)" 0
stop_resp
dmsetup remove er

# --- >= 1000 requests in one read batch --------------------------------
dmsetup create bt --table "0 $SZ userspace bt 8 /dev/vda"
dd if=/dev/mapper/bt of=/dev/null bs=8M count=1 iflag=direct status=none &
DD=$!
wait_for bash -c "[ \$(dmsetup status bt | awk '{print \$6}') -ge 1500 ]"
check "many blocks pending at once" ge "$(st bt pending)" 1000
start_resp bt $L/bt.log
wait $DD
check "one read() returned >= 1000 requests" bash -c "awk '/^batch/ { if (\$2 > m) m = \$2 } END { exit !(m >= 1000) }' $L/bt.log"
check "batched requests all answered" eq "$(st bt pending)" 0
stop_resp
dmsetup remove bt

# --- fsync waits for COMMIT_DONE ---------------------------------------
dmsetup create fs --table "0 $SZ userspace fs 8 /dev/vda"
start_resp fs $L/fs.log -D 3000
dd if=/tmp/p of=/dev/mapper/fs bs=4k seek=9 oflag=direct status=none
t0=$(date +%s%N)
dd if=/dev/null of=/dev/mapper/fs conv=fsync status=none
t1=$(date +%s%N)
check "fsync waited for the delayed COMMIT_DONE" ge $(((t1 - t0) / 1000000)) 2900
check "commit counted" ge "$(st fs commits)" 1
stop_resp
dmsetup remove fs

# --- daemon killed with requests pending -------------------------------
dmsetup create dk --table "0 $SZ userspace dk 8 /dev/vda"
start_resp dk $L/dk1.log -m sink
blk /dev/mapper/dk 4k 10 >/tmp/dk-read &
RD=$!
wait_for grep -q '^map ' $L/dk1.log
ID=$(awk '/^map/ { print $2; exit }' $L/dk1.log)
kill -9 "$RP"
wait "$RP" 2>/dev/null
check "killed daemon: waiting" eq "$(st dk daemon)" waiting
check "killed daemon: request still pending" eq "$(st dk pending)" 1
start_resp dk $L/dk2.log
wait $RD
check "I/O completed after the new daemon answered" eq $? 0
check "new daemon got the unanswered request again (same id)" grep -qE "^map $ID 10 " $L/dk2.log
check "re-sent data is right" cmp /tmp/dk-read <(blk /dev/vda 4k 10)
stop_resp
dmsetup remove dk

# --- no daemon: EIO after daemon_timeout; suspend/remove never hang ----
dmsetup create to --table "0 $SZ userspace to 8 2 daemon_timeout 3 /dev/vda"
check "TABLE keeps the feature args" eq "$(dmsetup table to)" "0 $SZ userspace to 8 2 daemon_timeout 3 254:0"
t0=$(date +%s%N)
check "no daemon: read fails" bash -c '! dd if=/dev/mapper/to of=/dev/null bs=4k count=1 iflag=direct status=none 2>/dev/null'
t1=$(date +%s%N)
ms=$(((t1 - t0) / 1000000))
check "no daemon: failed after about daemon_timeout ($ms ms)" bash -c "[ $ms -ge 2500 ] && [ $ms -le 15000 ]"
check "no daemon: status failed" eq "$(st to daemon)" failed
check "failed: later misses fail at once" bash -c '! dd if=/dev/mapper/to of=/dev/null bs=4k skip=7 count=1 iflag=direct status=none 2>/dev/null'
check "remove after timeout" dmsetup remove to

dmsetup create ns --table "0 $SZ userspace ns 8 /dev/vda"
blk /dev/mapper/ns 4k 3 >/dev/null 2>&1 &
RD=$!
wait_for bash -c "[ \$(dmsetup status ns | awk '{print \$6}') = 1 ]"
check "suspend with a pending bio and no daemon does not hang" timeout 30 dmsetup suspend ns
wait $RD
check "the pending bio failed" test $? -ne 0
dmsetup resume ns
check "remove with no daemon ever" timeout 30 dmsetup remove ns

# --- runs: one answer for many blocks (DMU_FEATURE_MAP_RUN) -----------
pattern /tmp/rn 4096
dd if=/tmp/rn of=/dev/vda bs=4k seek=1500 conv=notrunc oflag=direct status=none
dmsetup create rn --table "0 $SZ userspace rn 8 /dev/vda"
start_resp rn $L/rn.log -R 1024
check "FEATURES offers runs of up to 4096 blocks" grep -q '^features id=0 .* max_run=4096 ' $L/rn.log
blk /dev/mapper/rn 4k 0 >/dev/null
check "run: one request" eq "$(st rn misses)" 1
check "run: one answer remembered 1024 blocks" eq "$(st rn mapped)" 1024
dd if=/dev/mapper/rn of=/dev/null bs=64k count=64 iflag=direct status=none
check "run: the whole run is served without the daemon" eq "$(st rn misses)" 1
blk /dev/mapper/rn 4k 1024 >/dev/null
check "run: the next block asks again" eq "$(st rn misses)" 2
check "run: each block one block further on the device" cmp <(blk /dev/mapper/rn 4k 1500) /tmp/rn
check "run: still two requests" eq "$(st rn misses)" 2
# A 1 MiB read asks for many blocks at once; each answer's run stops at
# its pending neighbour and the last block's run goes on past the read.
# (When the responder is quicker than the splitting, an earlier block's
# run covers the rest of the read and goes on 1023 blocks from there: at
# least the next 256 blocks are mapped either way.)
dd if=/dev/mapper/rn of=/dev/null bs=1M skip=16 count=1 iflag=direct status=none
M=$(st rn misses)
# Riders: the blocks after the first wait on its request, whose run covers them.
check "run: a cold 1 MiB read sends one request" eq "$M" 3
dd if=/dev/mapper/rn of=/dev/null bs=4k skip=4352 count=256 iflag=direct status=none
check "run: the last answer of a sequential read maps ahead" eq "$(st rn misses)" "$M"
# A cold read asks for the start of its aligned window (1024 blocks, the
# longest run seen) and rides on that request: one answer maps the blocks
# before it too. A cold write asks for its own block.
dd if=/tmp/rn of=/dev/vda bs=4k seek=$((8192 + 700)) conv=notrunc oflag=direct status=none
M=$(st rn misses)
m=$(st rn mapped)
check "window: a cold read in a window's middle reads its block" cmp <(blk /dev/mapper/rn 4k $((8192 + 700))) /tmp/rn
check "window: ... after one request" eq $(($(st rn misses) - M)) 1
check "window: ... whose answer maps the whole window" eq $(($(st rn mapped) - m)) 1024
check "window: ... asked for the window's first block" grep -qE "^map [0-9]+ 8192 " $L/rn.log
blk /dev/mapper/rn 4k 8192 >/dev/null
check "window: its first block is then served without the daemon" eq $(($(st rn misses) - M)) 1
dd if=/tmp/rn of=/dev/mapper/rn bs=4k seek=$((12288 + 700)) oflag=direct status=none
check "window: a cold write asks for its own block" grep -qE "^map [0-9]+ $((12288 + 700)) " $L/rn.log
blk /dev/mapper/rn 4k 12288 >/dev/null
check "window: ... so the blocks before it still ask" eq $(($(st rn misses) - M)) 3
stop_resp
dmsetup remove rn
# A run keeps what is already there: 5003.. were mapped writable by the
# write's own run; the read asks for its window from 4096, whose run stops
# before 5003.
dmsetup create rk --table "0 $SZ userspace rk 8 /dev/vda"
start_resp rk $L/rk.log -m ro -R 1024
dd if=/tmp/rn of=/dev/mapper/rk bs=4k seek=5003 oflag=direct status=none
blk /dev/mapper/rk 4k 4990 >/dev/null
check "run: stops at a mapped block" eq "$(st rk mapped)" $((1024 + 5003 - 4096))
dd if=/tmp/rn of=/dev/mapper/rk bs=4k seek=5003 oflag=direct status=none
check "run: the mapped block kept its writable mapping" eq "$(st rk misses)" 2
dd if=/tmp/rn of=/dev/mapper/rk bs=4k seek=4995 oflag=direct status=none
check "run: the read's run is read-only" eq "$(st rk misses)" 3
stop_resp
dmsetup remove rk
# Riding outlives a short answer. In cow mode the responder cuts a run at
# the first allocated block, so a cold read of block 11 (its window's
# request from block 0) maps 0-11 only; a cold 1 MiB read after that
# still sends one request, not one a block.
dmsetup create rs --table "0 $SZ userspace rs $BS /dev/vda /dev/vdb"
start_resp rs $L/rs.log -m cow=1 -R 64
dd if=/tmp/w of=/dev/mapper/rs bs=64k seek=12 oflag=direct status=none
wait_for grep -qE '^allocated [0-9]+ 12 ' $L/rs.log
dmsetup message rs 0 invalidate 0 $((SZ / BS))
m=$(st rs mapped)
blk /dev/mapper/rs 64k 11 >/dev/null
check "ride: a run stops before an allocated block" eq $(($(st rs mapped) - m)) 12
M=$(st rs misses)
dd if=/dev/mapper/rs of=/dev/null bs=1M skip=2 count=1 iflag=direct status=none
check "ride: a cold 1 MiB read after it sends one request" eq $(($(st rs misses) - M)) 1
# Where allocated and unallocated blocks alternate, every answer covers
# one block: the blocks that waited on a neighbour (the first, on its
# window's request, whose run stops at block 12) ask for themselves.
for b in 50 52 54 56; do dd if=/tmp/w of=/dev/mapper/rs bs=64k seek=$b oflag=direct status=none; done
wait_for grep -qE '^allocated [0-9]+ 56 ' $L/rs.log
dmsetup message rs 0 invalidate 0 $((SZ / BS))
: >/tmp/rsx
for b in 50 51 52 53 54 55 56 57; do
	if [ $((b % 2)) -eq 0 ]; then cat /tmp/w; else blk /dev/vdb 64k $b; fi >>/tmp/rsx
done
M=$(st rs misses)
check "ride: alternating blocks read back in one 512 KiB read" cmp <(dd if=/dev/mapper/rs bs=512k count=1 skip=$((50 * 65536)) iflag=direct,skip_bytes status=none) /tmp/rsx
check "ride: ... after the window's request and one for each block" eq $(($(st rs misses) - M)) 9
stop_resp
dmsetup remove rs
# A run never evicts: it stops where the table is full.
dmsetup create rm --table "0 $SZ userspace rm 8 2 max_mappings 100 /dev/vda"
start_resp rm $L/rm.log -m zero -R 1024
blk /dev/mapper/rm 4k 0 >/dev/null
check "run: stops at max_mappings" eq "$(st rm mapped)" 100
check "run: nothing evicted" eq "$(st rm evictions)" 0
check "run: zero run reads zeros" cmp <(blk /dev/mapper/rm 4k 99) <(head -c 4096 /dev/zero)
check "run: zero run served without the daemon" eq "$(st rm misses)" 1
# With the table full no run can cover a rider, so none waits on another
# block's request: each block asks for itself (a block whose mapping was
# evicted before its bio went on asks again, so at least once each).
dd if=/dev/mapper/rm of=/tmp/rm bs=1M skip=1 count=1 iflag=direct status=none
check "run: a full table: every block of a 1 MiB read asks for itself" ge "$(st rm misses)" 257
check "run: and the read returns the zeros" cmp /tmp/rm <(head -c 1048576 /dev/zero)
stop_resp
dmsetup remove rm

# Eviction keeps what is in use: with the table full, block 0 was hit
# since it was mapped, so the next miss evicts block 1, the oldest not hit
# since (a plain FIFO would drop block 0).
dmsetup create ev --table "0 $SZ userspace ev 8 2 max_mappings 8 /dev/vda"
start_resp ev $L/ev.log
for b in 0 1 2 3 4 5 6 7; do blk /dev/mapper/ev 4k $b >/dev/null; done
blk /dev/mapper/ev 4k 0 >/dev/null
check "eviction: a full table, nothing evicted yet" eq "$(st ev evictions)" 0
blk /dev/mapper/ev 4k 8 >/dev/null
check "eviction: a miss on a full table evicts one mapping" eq "$(st ev evictions)" 1
check "eviction: max_mappings kept" eq "$(st ev mapped)" 8
blk /dev/mapper/ev 4k 0 >/dev/null
check "eviction: the block hit since it was mapped stayed" eq "$(st ev misses)" 9
blk /dev/mapper/ev 4k 1 >/dev/null
check "eviction: the oldest block not hit since went" eq "$(st ev misses)" 10
stop_resp
dmsetup remove ev

# --- bad input from the daemon -----------------------------------------
dmsetup create bd --table "0 $SZ userspace bd 8 /dev/vda /dev/vdb"
start_resp bd $L/bd.log -V -x 100000
pattern /tmp/bd 262144
dd if=/tmp/bd of=/dev/mapper/bd bs=64k oflag=direct status=none
check "malformed answers all rejected" bash -c "[ \$(grep -c '^bad .* rejected' $L/bd.log) = 17 ] && ! grep -q ACCEPTED $L/bd.log"
check "100000 random messages rejected" grep -q '^fuzz sent=100000 accepted=0' $L/bd.log
check "device still works after bad input" cmp <(dd if=/dev/mapper/bd bs=64k count=4 iflag=direct status=none) /tmp/bd
stop_resp
dmsetup remove bd

# --- a failing data device (dm-flakey) ---------------------------------
dmsetup create flaky --table "0 $SZ flakey /dev/vdb 0 0 1"
dmsetup create fk --table "0 $SZ userspace fk $BS /dev/vda /dev/mapper/flaky"
start_resp fk $L/fk.log -m copy=1
check "read error on the data device reaches the caller" bash -c '! dd if=/dev/mapper/fk of=/dev/null bs=64k count=1 iflag=direct status=none 2>/dev/null'
check "failed copy-first fails the write" bash -c '! dd if=/tmp/p of=/dev/mapper/fk bs=4k seek=17 oflag=direct status=none 2>/dev/null'
wait_for grep -q '^copy_error ' $L/fk.log
check "failed copy-first reported to the daemon" grep -qE '^copy_error [0-9]+ 1 5$' $L/fk.log
check "failed copy-first not remembered" eq "$(st fk copies)" 0
stop_resp
check "remove over a failing device" timeout 30 dmsetup remove fk
# A first write the kernel merges, over a base that fails its reads.
dmsetup create fw --table "0 $SZ userspace fw $BS /dev/vda /dev/mapper/flaky"
start_resp fw $L/fw.log -m cow=1 -R 16
check "failed merge fails the write" bash -c '! dd if=/tmp/p of=/dev/mapper/fw bs=4k seek=17 oflag=direct status=none 2>/dev/null'
check "failed merge reported to the daemon" wait_for grep -qE '^copy_error [0-9]+ 1 5$' $L/fw.log
check "failed merge not remembered" eq "$(st fw copies)" 0
check "no allocation reported for it" bash -c "! grep -q '^allocated ' $L/fw.log"
stop_resp
check "remove after a failed merge" timeout 30 dmsetup remove fw
dmsetup remove flaky

check "module unloads" rmmod dmu
