/* rio: a tiny block I/O load for the busybox lab guest (no fio there).
 *
 *   rio DEVICE seqread|seqwrite|randread|randwrite BLOCK_BYTES SECONDS SPAN_BYTES
 *
 * One request at a time (queue depth 1) with O_DIRECT, for SECONDS, over the first
 * SPAN_BYTES of DEVICE; random offsets come from a fixed-seed xorshift, so both disks
 * of a comparison see the same sequence. Prints "ops=N bytes=B secs=S errors=E".
 * Built by bench/storage_iscsi.py with the host's gcc (-static); nothing binary is kept.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    if (argc != 6) {
        fprintf(stderr, "usage: rio DEV MODE BLOCK SECONDS SPAN\n");
        return 2;
    }
    const char *dev = argv[1], *mode = argv[2];
    long block = atol(argv[3]);
    double seconds = atof(argv[4]);
    long long span = atoll(argv[5]);
    int writing = strstr(mode, "write") != NULL;
    int random_io = strncmp(mode, "rand", 4) == 0;
    if (block <= 0 || block % 512 || span < block || seconds <= 0) {
        fprintf(stderr, "bad arguments\n");
        return 2;
    }
    int fd = open(dev, (writing ? O_WRONLY : O_RDONLY) | O_DIRECT);
    if (fd < 0) {
        perror(dev);
        return 1;
    }
    void *buf;
    if (posix_memalign(&buf, 4096, block)) return 1;
    memset(buf, 0x5a, block);
    long long blocks = span / block, ops = 0, errors = 0, next = 0;
    uint64_t x = 88172645463325252ULL;
    double start = now(), end = start + seconds;
    while (now() < end) {
        long long idx;
        if (random_io) {
            x ^= x << 13; x ^= x >> 7; x ^= x << 17;
            idx = (long long)(x % (uint64_t)blocks);
        } else {
            idx = next++ % blocks;
        }
        ssize_t n = writing ? pwrite(fd, buf, block, idx * block)
                            : pread(fd, buf, block, idx * block);
        if (n != block) errors++;
        ops++;
    }
    double took = now() - start;
    printf("ops=%lld bytes=%lld secs=%.3f errors=%lld\n", ops, ops * block, took, errors);
    close(fd);
    return errors ? 1 : 0;
}
