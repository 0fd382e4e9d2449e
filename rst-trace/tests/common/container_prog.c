/*
 * The test containers' program, built with `gcc -static` by tests/common/docker.rs into the
 * image's rootfs (no image can be pulled). One binary, one scenario step per command:
 *
 *   rsttest listen PORT BACKLOG          listen on 0.0.0.0:PORT with BACKLOG, never accept (S7)
 *   rsttest connect PORT COUNT MILLIS    COUNT non-blocking connects to 127.0.0.1:PORT, held for
 *                                        MILLIS ms, then exit (S7, from `docker exec`)
 *   rsttest serve PORT                   accept on 0.0.0.0:PORT and read each connection until it
 *                                        ends (S4's server)
 *   rsttest linger PORT MILLIS           connect to 127.0.0.1:PORT, wait MILLIS ms, close with
 *                                        SO_LINGER {on, 0} (a RST from this process), then wait
 *                                        MILLIS ms more so that its pid can still be inspected
 *
 * Every wait is bounded except `listen` and `serve`, which run until the container is removed.
 * Exit status 2 means bad arguments, 3 a failed system call (with perror on stderr).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static void fail(const char *what) {
    perror(what);
    exit(3);
}

static void sleep_ms(long ms) {
    struct timespec t = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&t, &t) == -1 && errno == EINTR) {
    }
}

static struct sockaddr_in address(const char *ip, int port) {
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons((unsigned short)port);
    if (inet_pton(AF_INET, ip, &a.sin_addr) != 1) {
        exit(2);
    }
    return a;
}

static int listening(int port, int backlog) {
    struct sockaddr_in a = address("0.0.0.0", port);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    if (fd < 0) fail("socket");
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(fd, (struct sockaddr *)&a, sizeof a) != 0) fail("bind");
    if (listen(fd, backlog) != 0) fail("listen");
    return fd;
}

int main(int argc, char **argv) {
    if (argc >= 4 && strcmp(argv[1], "listen") == 0) {
        listening(atoi(argv[2]), atoi(argv[3]));
        for (;;) pause();
    }
    if (argc >= 5 && strcmp(argv[1], "connect") == 0) {
        struct sockaddr_in a = address("127.0.0.1", atoi(argv[2]));
        int count = atoi(argv[3]);
        for (int i = 0; i < count && i < 64; i++) {
            int fd = socket(AF_INET, SOCK_STREAM, 0);
            if (fd < 0) fail("socket");
            fcntl(fd, F_SETFL, O_NONBLOCK);
            if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0 && errno != EINPROGRESS)
                fail("connect");
        }
        sleep_ms(atol(argv[4]));
        return 0;
    }
    if (argc >= 3 && strcmp(argv[1], "serve") == 0) {
        int fd = listening(atoi(argv[2]), 16);
        for (;;) {
            char buf[256];
            int conn = accept(fd, NULL, NULL);
            if (conn < 0) fail("accept");
            while (read(conn, buf, sizeof buf) > 0) {
            }
            close(conn);
        }
    }
    if (argc >= 4 && strcmp(argv[1], "linger") == 0) {
        struct sockaddr_in a = address("127.0.0.1", atoi(argv[2]));
        long ms = atol(argv[3]);
        struct linger off = {1, 0};
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        if (fd < 0) fail("socket");
        /* The server may still be starting: retry for up to 5 s. */
        for (int tries = 0; connect(fd, (struct sockaddr *)&a, sizeof a) != 0; tries++) {
            if (tries >= 100) fail("connect");
            close(fd);
            sleep_ms(50);
            fd = socket(AF_INET, SOCK_STREAM, 0);
            if (fd < 0) fail("socket");
        }
        sleep_ms(ms);
        if (setsockopt(fd, SOL_SOCKET, SO_LINGER, &off, sizeof off) != 0) fail("setsockopt");
        close(fd);
        sleep_ms(ms);
        return 0;
    }
    fprintf(stderr, "usage: rsttest listen|connect|serve|linger ...\n");
    return 2;
}
