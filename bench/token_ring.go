// Token ring in Go: F goroutines in a ring of unbuffered channels pass a token H hops, as
// bench/token_ring.cpp does: goroutine i receives from channel i and sends the token, counted
// down, on channel i+1; the one that receives 0 reports the end. Prints nanoseconds per hop (from
// the first send to the end), peak RSS and user/system CPU, the same JSON fields with -json-line;
// GOMAXPROCS comes from the environment. Built and run by scripts/bench-fibers.
//
//	token-ring-go [-fibers F] [-hops H] [-json-line]
package main

import (
	"flag"
	"fmt"
	"os"
	"runtime"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
)

func main() {
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), `usage: %s [-fibers F] [-hops H] [-json-line]

F goroutines in a ring of unbuffered channels pass a token H hops. Prints nanoseconds per hop, peak
RSS and user/system CPU; the hop count is checked (exit 1 if wrong). GOMAXPROCS comes from the
environment.

`, os.Args[0])
		flag.PrintDefaults()
	}
	fibers := flag.Int("fibers", 1000, "goroutines in the ring, at least 2")
	hops := flag.Int("hops", 1000000, "hops the token makes")
	jsonLine := flag.Bool("json-line", false, "print the result as one JSON object")
	flag.Parse()
	if *fibers < 2 || *hops < 0 || flag.NArg() > 0 {
		fmt.Fprintln(os.Stderr, "token-ring-go: bad arguments (see -help)")
		os.Exit(2)
	}
	procs := runtime.GOMAXPROCS(0)
	variant := fmt.Sprintf("go-%dp", procs)
	fmt.Fprintf(os.Stderr, "token_ring [%s]: %d fibers, %d hops\n", variant, *fibers, *hops)

	channels := make([]chan int, *fibers)
	for i := range channels {
		channels[i] = make(chan int)
	}
	done := make(chan int)
	var sent int64
	for i := 0; i < *fibers; i++ {
		go func(in chan int, out chan int) {
			n := int64(0)
			for token := range in {
				if token == 0 {
					atomic.AddInt64(&sent, n)
					done <- 0
					return
				}
				out <- token - 1
				n++
			}
			atomic.AddInt64(&sent, n)
			done <- 1
		}(channels[i], channels[(i+1)%*fibers])
	}
	t0 := time.Now()
	channels[0] <- *hops
	last := <-done
	wall := time.Since(t0).Seconds()
	// The others are parked in a receive: closing their channels ends them, and they add their counts.
	for i := range channels {
		close(channels[i])
	}
	for i := 0; i < *fibers-1; i++ {
		<-done
	}

	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	user := float64(ru.Utime.Sec) + float64(ru.Utime.Usec)/1e6
	sys := float64(ru.Stime.Sec) + float64(ru.Stime.Usec)/1e6
	total := atomic.LoadInt64(&sent)
	ok := last == 0 && total == int64(*hops)
	perHop := 0.0
	if *hops > 0 {
		perHop = wall * 1e9 / float64(*hops)
	}
	label := fmt.Sprintf("Go %s, GOMAXPROCS=%d", strings.TrimPrefix(runtime.Version(), "go"), procs)
	if *jsonLine {
		fmt.Printf("{\"bench\": \"token_ring\", \"variant\": \"%s\", \"label\": \"%s\", \"fibers\": %d, \"hops\": %d, "+
			"\"answer\": %d, \"ok\": %t, \"wall_s\": %.6f, \"per_op_ns\": %.3f, \"user_s\": %.3f, \"system_s\": %.3f, "+
			"\"maxrss_kib\": %d}\n", variant, label, *fibers, *hops, total, ok, wall, perHop, user, sys, ru.Maxrss)
	} else {
		verdict := "WRONG"
		if ok {
			verdict = "ok   "
		}
		fmt.Printf("%-46s %s  wall %8.3f s  %9.1f ns/hop  peak RSS %9.1f MiB  user %7.2f s  sys %7.2f s\n",
			label, verdict, wall, perHop, float64(ru.Maxrss)/1024, user, sys)
	}
	if !ok {
		fmt.Fprintf(os.Stderr, "token_ring [%s]: %d hops made, %d expected\n", variant, total, *hops)
		os.Exit(1)
	}
}
