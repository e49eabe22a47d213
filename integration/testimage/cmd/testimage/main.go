// Command testimage writes the test application's container image (package
// testimage) as a docker-archive tarball, for `make appliance` and for
// trying `ecs-image deploy` by hand.
//
//	go run ./integration/testimage/cmd/testimage -o out/demo/testapp.tar [-version 2] [-tag ecs/testapp:latest]
//	go run ./integration/testimage/cmd/testimage -standins templates/files/images [-version 2]
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/ecs-image/ecs-image/integration/testimage"
)

func main() {
	out := flag.String("o", "", "output tarball (required)")
	version := flag.String("version", testimage.DefaultVersion, "version the server reports ($APP_VERSION)")
	tags := flag.String("tag", testimage.DefaultTag, "comma-separated image tags")
	port := flag.Int("port", testimage.DefaultPort, "port the server listens on and the image exposes")
	standins := flag.String("standins", "", "write the ECS stand-in images (ecs/ecs, ecs/pdfas, ecs/mocca) into this directory instead")
	flag.Usage = func() {
		fmt.Fprintf(os.Stderr, "usage: testimage -o FILE.tar [-version V] [-tag T[,T…]] [-port N]\n\n"+
			"Builds the static test HTTP server and writes it as a docker-archive image tarball.\n\n")
		flag.PrintDefaults()
	}
	flag.Parse()
	if *standins != "" && flag.NArg() == 0 {
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		defer stop()
		files, err := testimage.BuildStandins(ctx, *standins, *version)
		if err != nil {
			fmt.Fprintln(os.Stderr, "testimage:", err)
			os.Exit(1)
		}
		fmt.Println(strings.Join(files, "\n"))
		return
	}
	if *out == "" || flag.NArg() != 0 {
		flag.Usage()
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	o := testimage.Options{Tags: strings.Split(*tags, ","), Version: *version, Port: *port}
	if err := testimage.Build(ctx, *out, o); err != nil {
		fmt.Fprintln(os.Stderr, "testimage:", err)
		os.Exit(1)
	}
	fmt.Println(*out)
}
