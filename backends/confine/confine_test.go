package confine

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/rlmrun/rlmrun/internal/testbin"
)

// Apply cannot be undone, so each case confines a child: this test binary
// again, as the helper below.
const helperEnv = "RLMRUN_CONFINE_HELPER"

func TestMain(m *testing.M) {
	if dir := os.Getenv(helperEnv); dir != "" {
		os.Exit(helper(dir))
	}
	os.Exit(m.Run())
}

// helper confines itself to dir (and the system), then reports what it
// can still do, one line per probe.
func helper(dir string) int {
	port := os.Getenv("RLMRUN_CONFINE_PORT")
	var p uint16
	fmt.Sscan(port, &p)
	policy := System()
	policy.RW = []string{dir}
	got, err := Apply(policy, Required)
	if err != nil {
		fmt.Println("apply:", err)
		return 1
	}
	fmt.Println("confinement", got)
	probe := func(name string, err error) {
		if err != nil {
			fmt.Println(name, "refused")
		} else {
			fmt.Println(name, "allowed")
		}
	}
	probe("write-inside", os.WriteFile(filepath.Join(dir, "f"), []byte("x"), 0o644))
	_, err = os.ReadFile("/etc/passwd")
	probe("read-passwd", err)
	_, err = os.ReadDir(filepath.Dir(dir))
	probe("list-parent", err)
	probe("write-tmp", os.WriteFile(filepath.Join(os.TempDir(), fmt.Sprintf("confine-%d", os.Getpid())), nil, 0o644))
	_, err = os.ReadFile("/usr/bin/env")
	probe("read-usr", err)
	c, err := net.Dial("tcp", "127.0.0.1:"+port)
	if err == nil {
		c.Close()
	}
	probe("connect", err)
	probe("bind", bindTCP())
	// What the confined process starts through Scoped: no capabilities.
	var status strings.Builder
	cat := exec.Command("cat", "/proc/self/status")
	cat.Stdout = &status
	exited := make(chan struct{})
	if err := Scoped(cat.Start, exited); err != nil {
		fmt.Println("scoped:", err)
		return 1
	}
	_ = cat.Wait()
	close(exited)
	for _, l := range strings.Split(status.String(), "\n") {
		if strings.HasPrefix(l, "CapEff:") || strings.HasPrefix(l, "CapBnd:") || strings.HasPrefix(l, "NoNewPrivs:") {
			fmt.Println(strings.Join(strings.Fields(l), " "))
		}
	}
	return 0
}

func TestApply(t *testing.T) {
	if KernelABI() < 4 {
		t.Skip("Landlock ABI >= 4 needed (this kernel has none or an older one)")
	}
	if cgoBuild {
		testbin.Need(t, false, "a test binary built without cgo (CGO_ENABLED=0 go test ./backends/confine, as scripts/test does)")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	dir := filepath.Join(t.TempDir(), "root")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), helperEnv+"="+dir, fmt.Sprintf("RLMRUN_CONFINE_PORT=%d", ln.Addr().(*net.TCPAddr).Port))
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	want := fmt.Sprintf(`confinement landlock-abi-%d
write-inside allowed
read-passwd refused
list-parent refused
write-tmp refused
read-usr allowed
connect refused
bind refused
CapEff: 0000000000000000
CapBnd: %s
NoNewPrivs: 1
`, min(ABI(), maxABI), map[bool]string{true: "0000000000000000", false: capBnd(t)}[os.Geteuid() == 0])
	if string(out) != want {
		t.Errorf("got\n%s\nwant\n%s", out, want)
	}
}

// capBnd is this process's bounding set (a non-root process cannot empty
// its own).
func capBnd(t *testing.T) string {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) == 2 && f[0] == "CapBnd:" {
			return f[1]
		}
	}
	return ""
}

func TestOffDoesNothing(t *testing.T) {
	if got, err := Apply(System(), Off); err != nil || got != None {
		t.Fatalf("Apply(Off) = %q, %v", got, err)
	}
}

// bindTCP binds a TCP socket to an ephemeral port of loopback, as a
// cell's server would.
func bindTCP() error {
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 0)
	if err != nil {
		return err
	}
	defer syscall.Close(fd)
	return syscall.Bind(fd, &syscall.SockaddrInet4{Port: 0, Addr: [4]byte{127, 0, 0, 1}})
}
