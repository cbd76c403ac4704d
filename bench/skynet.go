// skynet in Go, the classic form (goroutines + unbuffered channels): a root goroutine starts 10
// children, each starts 10, down to N leaves; each leaf sends its number and every parent the sum
// of its children's, so the answer is N(N-1)/2. Checked: a wrong sum exits 1. Prints wall time,
// peak RSS and user/system CPU like bench/skynet.cpp (the same JSON fields with -json-line);
// GOMAXPROCS comes from the environment. Built and run by scripts/bench-fibers.
//
//	skynet-go [-leaves N] [-json-line]
package main

import (
	"flag"
	"fmt"
	"os"
	"runtime"
	"strings"
	"syscall"
	"time"
)

func skynet(c chan int, num int, size int, div int) {
	if size == 1 {
		c <- num
		return
	}
	rc := make(chan int)
	sum := 0
	for i := 0; i < div; i++ {
		subNum := num + i*(size/div)
		go skynet(rc, subNum, size/div, div)
	}
	for i := 0; i < div; i++ {
		sum += <-rc
	}
	c <- sum
}

func powerOfTen(n int) bool {
	if n < 1 {
		return false
	}
	for n%10 == 0 {
		n /= 10
	}
	return n == 1
}

func main() {
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), `usage: %s [-leaves N] [-json-line]

skynet: a root goroutine starts 10 children, each starts 10, down to N leaves; each leaf sends its
number on an unbuffered channel, each parent the sum of its children's. The sum is checked (exit 1
if wrong). Prints wall time, peak RSS and user/system CPU. GOMAXPROCS comes from the environment.

`, os.Args[0])
		flag.PrintDefaults()
	}
	leaves := flag.Int("leaves", 1000000, "leaves, a power of 10")
	jsonLine := flag.Bool("json-line", false, "print the result as one JSON object")
	flag.Parse()
	if !powerOfTen(*leaves) || flag.NArg() > 0 {
		fmt.Fprintln(os.Stderr, "skynet-go: -leaves takes a power of 10, and there are no other arguments (see -help)")
		os.Exit(2)
	}
	procs := runtime.GOMAXPROCS(0)
	variant := fmt.Sprintf("go-%dp", procs)
	fmt.Fprintf(os.Stderr, "skynet [%s]: %d leaves\n", variant, *leaves)

	t0 := time.Now()
	c := make(chan int)
	go skynet(c, 0, *leaves, 10)
	sum := <-c
	wall := time.Since(t0).Seconds()

	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	user := float64(ru.Utime.Sec) + float64(ru.Utime.Usec)/1e6
	sys := float64(ru.Stime.Sec) + float64(ru.Stime.Usec)/1e6
	n := *leaves
	ok := sum == n*(n-1)/2
	label := fmt.Sprintf("Go %s, GOMAXPROCS=%d, goroutines + channels", strings.TrimPrefix(runtime.Version(), "go"), procs)
	if *jsonLine {
		fmt.Printf("{\"bench\": \"skynet\", \"variant\": \"%s\", \"label\": \"%s\", \"leaves\": %d, \"answer\": %d, "+
			"\"ok\": %t, \"wall_s\": %.6f, \"per_op_ns\": -1, \"user_s\": %.3f, \"system_s\": %.3f, \"maxrss_kib\": %d}\n",
			variant, label, n, sum, ok, wall, user, sys, ru.Maxrss)
	} else {
		verdict := "WRONG"
		if ok {
			verdict = "ok   "
		}
		fmt.Printf("%-46s %s  wall %8.3f s  peak RSS %9.1f MiB  user %7.2f s  sys %7.2f s\n",
			label, verdict, wall, float64(ru.Maxrss)/1024, user, sys)
	}
	if !ok {
		fmt.Fprintf(os.Stderr, "skynet [%s]: sum %d, expected %d\n", variant, sum, n*(n-1)/2)
		os.Exit(1)
	}
}
