/* Sets the wall clock of the processes it is preloaded into, as `date -s` or an NTP step
 * sets a host's: CLOCK_REALTIME (and time(), gettimeofday()) read `shift` nanoseconds
 * off, where `shift` is the int64 in the file named by CLOCK_SHIFT_FILE, read at every
 * call (mapped, so that a test steps every process at once). The monotonic clock is
 * left alone, as a real step leaves it.
 *
 * cc -shared -fPIC -O2 -o clockshift.so clockshift.c -ldl
 * CLOCK_SHIFT_FILE=/tmp/shift LD_PRELOAD=./clockshift.so python ...
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static _Atomic int64_t *shift_ns;
static int (*real_clock_gettime)(clockid_t, struct timespec *);

static void init(void) {
    const char *path = getenv("CLOCK_SHIFT_FILE");
    if (path) {
        int fd = open(path, O_RDONLY);
        if (fd >= 0) {
            void *m = mmap(0, sizeof(int64_t), PROT_READ, MAP_SHARED, fd, 0);
            if (m != MAP_FAILED) shift_ns = m;
            close(fd);
        }
    }
    real_clock_gettime = dlsym(RTLD_NEXT, "clock_gettime");
}

int clock_gettime(clockid_t clock, struct timespec *ts) {
    if (!real_clock_gettime) init();
    int r = real_clock_gettime(clock, ts);
    if (r == 0 && shift_ns && (clock == CLOCK_REALTIME || clock == CLOCK_REALTIME_COARSE)) {
        int64_t t = (int64_t)ts->tv_sec * 1000000000LL + ts->tv_nsec + atomic_load(shift_ns);
        ts->tv_sec = t / 1000000000LL;
        ts->tv_nsec = t % 1000000000LL;
    }
    return r;
}

time_t time(time_t *out) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    if (out) *out = ts.tv_sec;
    return ts.tv_sec;
}

int gettimeofday(struct timeval *tv, void *tz) {
    (void)tz;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    tv->tv_sec = ts.tv_sec;
    tv->tv_usec = ts.tv_nsec / 1000;
    return 0;
}
