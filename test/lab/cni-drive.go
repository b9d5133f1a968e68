// cni-drive: a minimal CNI runtime for the tests, built on Debian's libcni (golang-github-appc-cni-dev,
// spec <= 1.0), the library containerd, CRI-O and podman call plugins through. Built offline by
// test/lab/cni-drive.ts (GOPATH=/usr/share/gocode, GO111MODULE=off: no module download).
//
// usage: cni-drive add|check|del <conflist> <netns> <containerID> <ifname>
//        cni-drive version <conflist> <plugin-type>
// CNI_PATH (plugin dirs, ":"-separated), CNI_CACHE_DIR, and CNI_ARGS ("K=V;...", passed as args
// with IgnoreUnknown=1 as the runtimes do) come from the environment. Errors go to stderr with the
// plugin's code: "cni-drive: code N: msg" and exit 1.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
)

func main() {
	if len(os.Args) < 4 {
		usage()
	}
	list, err := libcni.ConfListFromFile(os.Args[2])
	if err != nil {
		fail(err)
	}
	cni := libcni.NewCNIConfigWithCacheDir(strings.Split(os.Getenv("CNI_PATH"), ":"), os.Getenv("CNI_CACHE_DIR"), nil)
	ctx := context.Background()
	if os.Args[1] == "version" {
		info, err := cni.GetVersionInfo(ctx, os.Args[3])
		if err != nil {
			fail(err)
		}
		caps, err := cni.ValidateNetworkList(ctx, list)
		if err != nil {
			fail(err)
		}
		out, _ := json.Marshal(map[string]interface{}{"supportedVersions": info.SupportedVersions(), "capabilities": caps})
		fmt.Println(string(out))
		return
	}
	if len(os.Args) < 6 {
		usage()
	}
	rt := &libcni.RuntimeConf{ContainerID: os.Args[4], NetNS: os.Args[3], IfName: os.Args[5],
		Args: [][2]string{{"IgnoreUnknown", "1"}}, CapabilityArgs: map[string]interface{}{}}
	for _, kv := range strings.Split(os.Getenv("CNI_ARGS"), ";") {
		if p := strings.SplitN(kv, "=", 2); len(p) == 2 {
			rt.Args = append(rt.Args, [2]string{p[0], p[1]})
		}
	}
	switch os.Args[1] {
	case "add":
		res, err := cni.AddNetworkList(ctx, list, rt)
		if err != nil {
			fail(err)
		}
		if err := res.Print(); err != nil {
			fail(err)
		}
	case "check":
		err = cni.CheckNetworkList(ctx, list, rt)
	case "del":
		err = cni.DelNetworkList(ctx, list, rt)
	default:
		usage()
	}
	if err != nil {
		fail(err)
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: cni-drive add|check|del <conflist> <netns> <containerID> <ifname> | version <conflist> <plugin-type>")
	os.Exit(2)
}

func fail(err error) {
	var te *types.Error
	if errors.As(err, &te) {
		fmt.Fprintf(os.Stderr, "cni-drive: code %d: %s\n", te.Code, te.Error())
	} else {
		fmt.Fprintf(os.Stderr, "cni-drive: %v\n", err)
	}
	os.Exit(1)
}
