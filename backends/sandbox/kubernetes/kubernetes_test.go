package kubernetes_test

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rlmrun/rlmrun/backends"
	"github.com/rlmrun/rlmrun/backends/client"
	"github.com/rlmrun/rlmrun/backends/sandbox"
	"github.com/rlmrun/rlmrun/backends/sandbox/kubernetes"
	"github.com/rlmrun/rlmrun/backends/sandbox/sandboxtest"
	"github.com/rlmrun/rlmrun/internal/testbin"
)

// TestImage is the Docker test image, imported into the test cluster's
// containerd by scripts/kube-test-cluster.
const TestImage = "rlmrun-test:latest"

var (
	agentBin   string
	kubeconfig string
)

func TestMain(m *testing.M) {
	// Only the cluster scripts/test starts: never a cluster a developer's
	// KUBECONFIG happens to name.
	kubeconfig = os.Getenv("RLMRUN_KUBECONFIG")
	testbin.Main(m, &agentBin)
}

// needCluster skips (or, under scripts/test, fails) a test without the
// test cluster.
func needCluster(t testing.TB) {
	t.Helper()
	testbin.Need(t, kubeconfig != "", "a Kubernetes cluster (scripts/test starts one with scripts/kube-test-cluster and sets RLMRUN_KUBECONFIG)")
}

func options(image string) kubernetes.Options {
	return kubernetes.Options{AgentPath: agentBin, Config: kubernetes.Config{Image: image, Pull: "never", Kubernetes: kubernetes.Settings{Kubeconfig: kubeconfig, Namespace: "default"}}}
}

func provider(t testing.TB) *kubernetes.Provider {
	t.Helper()
	needCluster(t)
	p, err := kubernetes.New(context.Background(), options(TestImage))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Close() })
	return p
}

// settings are small enough for many pods on the test cluster's one node.
func settings() sandbox.Settings {
	s := sandboxtest.Settings()
	s.CPUCores = 0.1
	return s
}

func podded(t testing.TB, s sandbox.Settings) (*client.Session, *backends.Facts) {
	t.Helper()
	return sandboxtest.Start(t, provider(t), s)
}

// nodeIP is an address of this machine the pods could try to reach.
func nodeIP(t *testing.T) string {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range addrs {
		if ip, ok := a.(*net.IPNet); ok && ip.IP.To4() != nil && !ip.IP.IsLoopback() {
			return ip.IP.String()
		}
	}
	t.Fatal("no address")
	return ""
}

func TestIsolation(t *testing.T) {
	ip := nodeIP(t)
	ln, err := net.Listen("tcp", ip+":0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	port := ln.Addr().(*net.TCPAddr).Port
	sess, facts := podded(t, settings())
	if facts.AgentUID != 1000 || facts.Provider != "kubernetes" {
		t.Errorf("facts %+v", facts)
	}
	cases := []struct{ name, code, want string }{
		{"no way out but the tunnel", fmt.Sprintf("(exec 3<>/dev/tcp/%s/%d) 2>/dev/null && echo connected || echo refused", ip, port), "refused\n"},
		{"no capabilities", "grep -E '^Cap(Inh|Prm|Eff|Bnd|Amb)' /proc/self/status | awk '{print $2}' | sort -u", "0000000000000000\n"},
		{"no new privileges", "grep NoNewPrivs /proc/self/status | awk '{print $2}'", "1\n"},
		{"unprivileged uid", "id -u; id -g", "1000\n1000\n"},
		{"read-only root", "touch /usr/x /etc/x /x 2>/dev/null || echo read-only", "read-only\n"},
		{"writable /tmp", "echo ok > /tmp/probe && cat /tmp/probe", "ok\n"},
		{"no service-account token", "ls /var/run/secrets/kubernetes.io 2>/dev/null | wc -l", "0\n"},
		{"no service links", "env | grep -c _SERVICE_HOST || true", "0\n"},
		{"private PID space", "ls -d /proc/[0-9]* | wc -l | awk '{print ($1 < 12) ? \"few\" : $1}'", "few\n"},
		{"bash and python run", "echo $BASH_VERSION | cut -d. -f1; python3 -c 'print(6*7)'", "5\n42\n"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			rep := sandboxtest.Exec(t, sess, tc.code)
			if rep.Stdout != tc.want {
				t.Errorf("%s: got %q (stderr %q), want %q", tc.code, rep.Stdout, rep.Stderr, tc.want)
			}
		})
	}
}

// TestLimits: memory_gb is the container's limit; disk_size_gb is the
// working directory volume's size limit, enforced by the kubelet's
// eviction (a pod over it is evicted, which ends the rollout).
func TestLimits(t *testing.T) {
	sess, _ := podded(t, settings())
	rep := sandboxtest.Exec(t, sess, "/usr/bin/python3 -c 'b = bytearray(1 << 30); print(len(b))' >/dev/null 2>&1; echo $?")
	if rep.Stdout == "0\n" {
		t.Errorf("allocated 1 GiB under a 0.5 GiB limit: %+v", rep)
	}
	if rep := sandboxtest.Exec(t, sess, "echo alive"); rep.Stdout != "alive\n" {
		t.Errorf("after the memory limit: %+v", rep)
	}
	_ = sandboxtest.Exec(t, sess, "head -c 100000000 /dev/zero > big; echo written")
	// The kubelet looks every 10 s, later on a busy node.
	testbin.Eventually(t, "the pod over its disk limit to be evicted", 3*time.Minute, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_, err := sess.Answer(ctx)
		return err != nil
	})
}

// TestPodsThatCannotRun: an image that is not there (pull never) fails as
// soon as the kubelet says so, a pod nothing can schedule fails at the
// startup timeout; both say why. The limits are generous: on a cold node the
// kubelet's first pod sandbox can take a while before any status appears.
func TestPodsThatCannotRun(t *testing.T) {
	cases := []struct {
		name  string
		opts  func(*kubernetes.Options)
		want  string
		limit time.Duration
	}{
		{"missing image", func(o *kubernetes.Options) { o.Image = "rlmrun-no-such-image:nope" }, "ErrImageNeverPull", 3 * time.Minute},
		{"unschedulable", func(o *kubernetes.Options) {
			o.Kubernetes.NodeSelector = map[string]string{"rlmrun.test/nowhere": "true"}
		}, "not scheduled (Unschedulable)", 20 * time.Second},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			needCluster(t)
			o := options(TestImage)
			tc.opts(&o)
			p, err := kubernetes.New(context.Background(), o)
			if err != nil {
				t.Fatal(err)
			}
			defer p.Close()
			ctx, cancel := context.WithTimeout(context.Background(), tc.limit)
			defer cancel()
			runID := fmt.Sprintf("stuck%d", time.Now().UnixNano())
			labels := map[string]string{sandbox.LabelManaged: "true", sandbox.LabelRun: runID, sandbox.LabelRollout: "r"}
			_, err = p.Create(ctx, sandbox.CreateRequest{Name: "rlmrun-" + runID, Settings: settings(), Labels: labels})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want it to say %q", err, tc.want)
			}
			// Nothing is left of it.
			infos, err := p.List(context.Background(), map[string]string{sandbox.LabelRun: runID})
			if err != nil || len(infos) != 0 {
				t.Errorf("left: %+v %v", infos, err)
			}
		})
	}
}

// TestPodGoesWithItsAgent: when the agent's connection drops (the runner
// died), the pod's init ends the pod, and cleanup finds it.
func TestPodGoesWithItsAgent(t *testing.T) {
	p := provider(t)
	runID := fmt.Sprintf("gone%d", time.Now().UnixNano())
	owner, _ := sandbox.OwnerLabels()
	labels := map[string]string{sandbox.LabelManaged: "true", sandbox.LabelRun: runID, sandbox.LabelRollout: "r#1"}
	for k, v := range owner {
		labels[k] = v
	}
	labels[sandbox.LabelOwnerPID] = "999999999" // a dead owner
	sb, err := p.Create(context.Background(), sandbox.CreateRequest{Name: "rlmrun-" + runID, Settings: settings(), Labels: labels})
	if err != nil {
		t.Fatal(err)
	}
	proc, err := sb.Start(context.Background(), []string{sandbox.AgentPathInside, "agent"})
	if err != nil {
		t.Fatal(err)
	}
	infos, err := p.List(context.Background(), map[string]string{sandbox.LabelRun: runID})
	if err != nil || len(infos) != 1 || infos[0].ID != sb.ID() || infos[0].Labels[sandbox.LabelRollout] != "r#1" {
		t.Fatalf("List = %+v, %v", infos, err)
	}
	proc.Close()
	testbin.Eventually(t, "the pod to end with its agent", 30*time.Second, func() bool {
		out, _ := exec.Command("kubectl", "--kubeconfig", kubeconfig, "get", "pod", sb.ID(), "-o", "jsonpath={.status.phase}").Output()
		return string(out) == "Succeeded"
	})
	left, err := sandbox.Leftovers(context.Background(), p, runID)
	if err != nil || len(left) == 0 {
		t.Fatalf("leftovers %v %v", left, err)
	}
	for _, l := range left {
		if err := l.Remove(context.Background()); err != nil {
			t.Error(err)
		}
	}
	if infos, _ := p.List(context.Background(), map[string]string{sandbox.LabelRun: runID}); len(infos) != 0 {
		t.Errorf("after cleanup: %+v", infos)
	}
}

// TestRequestsPerRollout: a rollout's sandbox costs at most six API
// requests (today four: create, watch, the exec that puts the agent in and
// becomes it, delete).
func TestRequestsPerRollout(t *testing.T) {
	p := provider(t)
	before := p.Requests()
	// Cleanups run last-in first-out: this one, registered before the
	// session's, counts after the session closed and the pod was deleted.
	t.Cleanup(func() {
		after := p.Requests()
		total := 0
		for k, v := range after {
			total += v - before[k]
		}
		// The run's NetworkPolicy is the run's, made and deleted once.
		total -= after["policy"] - before["policy"] + after["delete-policy"] - before["delete-policy"]
		if total > 6 || after["delete"] == before["delete"] {
			t.Errorf("%d API requests for one rollout: %v (before %v)", total, after, before)
		}
		t.Logf("%d API requests for one rollout: %v", total, after)
	})
	_, _ = sandboxtest.Start(t, p, settings())
}

// TestForkBomb: a cell that forks until it cannot takes neither the agent
// nor the pod down (pids are not limited per pod by Kubernetes: the node's
// podPidsLimit applies).
func TestForkBomb(t *testing.T) {
	s := settings()
	// A whole core: 300 forks under a tenth of one outlast the cell's
	// timeout on a busy machine, which tests the machine, not the pod.
	s.CPUCores = 1
	sess, _ := podded(t, s)
	if rep := sandboxtest.Exec(t, sess, `/usr/bin/python3 -c '
import os, signal, time
pids = []
for i in range(300):
    try:
        pid = os.fork()
    except OSError:
        break
    if pid == 0:
        time.sleep(2)
        os._exit(0)
    pids.append(pid)
for p in pids:
    os.kill(p, signal.SIGKILL)
print("forked", len(pids))
'`); !strings.HasPrefix(rep.Stdout, "forked ") {
		t.Errorf("fork bomb: %+v", rep)
	}
	if rep := sandboxtest.Exec(t, sess, "echo alive"); rep.Stdout != "alive\n" {
		t.Errorf("after the fork bomb: %+v", rep)
	}
}

func BenchmarkTrivialCell(b *testing.B) {
	sess, _ := podded(b, settings())
	sandboxtest.BenchTrivialCell(b, sess)
}

// BenchmarkColdStart measures a rollout's deferred start on the test
// cluster (pod created and running, agent put in and started, 100 files
// uploaded, worker started, first cell answered) against the floor the
// CLI sets on the same cluster: `kubectl run`, `kubectl wait` until it is
// Ready, and one `kubectl exec -i` (target: within 1.2x of it). The agent
// is streamed in (upload) or copied from an agent image by an init
// container (agent_image).
func BenchmarkColdStart(b *testing.B) {
	b.Run("upload", func(b *testing.B) { coldStart(b, provider(b)) })
	b.Run("agent_image", func(b *testing.B) {
		needCluster(b)
		opts := options(TestImage)
		opts.Config.Kubernetes.AgentImage = agentImage(b)
		p, err := kubernetes.New(context.Background(), opts)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { _ = p.Close() })
		coldStart(b, p)
	})
}

func coldStart(b *testing.B, p *kubernetes.Provider) {
	s := settings()
	s.CPUCores = 1 // the floor's pod is not throttled either
	ex, err := sandbox.NewExecutor(sandbox.Options{Provider: p, Settings: s})
	if err != nil {
		b.Fatal(err)
	}
	kubectl := func(args ...string) *exec.Cmd {
		return exec.Command("kubectl", append([]string{"--kubeconfig", kubeconfig, "-n", "default"}, args...)...)
	}
	var cli []float64
	before := p.Requests()
	ours := sandboxtest.ColdStarts(b, ex, func() {
		name := fmt.Sprintf("floor-%d", time.Now().UnixNano())
		t1 := time.Now()
		if out, err := kubectl("run", name, "--image", TestImage, "--image-pull-policy", "Never", "--restart", "Never", "--command", "--", "sleep", "300").CombinedOutput(); err != nil {
			b.Fatalf("kubectl run: %v: %s", err, out)
		}
		defer kubectl("delete", "pod", name, "--grace-period", "0", "--force", "--wait=false").Run()
		if out, err := kubectl("wait", "--for", "condition=Ready", "--timeout", "60s", "pod/"+name).CombinedOutput(); err != nil {
			b.Fatalf("kubectl wait: %v: %s", err, out)
		}
		c := kubectl("exec", "-i", name, "--", "cat")
		c.Stdin = strings.NewReader("hello")
		if out, err := c.Output(); err != nil || string(out) != "hello" {
			b.Fatalf("kubectl exec: %q %v", out, err)
		}
		cli = append(cli, float64(time.Since(t1).Microseconds())/1000)
	})
	requests := 0
	for k, v := range p.Requests() {
		if k != "policy" && k != "delete-policy" { // the run's, made once
			requests += v - before[k]
		}
	}
	b.ReportMetric(float64(requests)/float64(b.N), "api-requests/rollout")
	floor := sandboxtest.Median(cli)
	b.ReportMetric(floor, "kubectl-run-wait-exec-ms")
	if floor > 0 {
		b.ReportMetric(ours/floor, "x-floor")
	}
}

// BenchmarkManyPods starts RLMRUN_KUBE_SCALE_N rollouts' sandboxes at once
// (default 32; the scale is 256), each answering one cell, and
// reports the wall time, the API requests per rollout, how often the API
// server asked rlmrun to slow down (429 answers, retried) and the share of
// rollouts that failed.
func BenchmarkManyPods(b *testing.B) {
	n := 32
	if v := os.Getenv("RLMRUN_KUBE_SCALE_N"); v != "" {
		if _, err := fmt.Sscan(v, &n); err != nil || n < 1 {
			b.Fatalf("RLMRUN_KUBE_SCALE_N=%q", v)
		}
	}
	p := provider(b)
	s := settings()
	// No requests: many pods on one small node, sharing its two cores
	// unthrottled (the API's side of scale is measured, not the node's).
	s.CPUCores, s.MemoryBytes, s.DiskBytes = 0, 0, 0
	s.CreateRetries = 5 // the spec's default
	ex, err := sandbox.NewExecutor(sandbox.Options{Provider: p, Settings: s})
	if err != nil {
		b.Fatal(err)
	}
	before := p.Requests()
	failed := 0
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		runID := fmt.Sprintf("many%d", time.Now().UnixNano())
		errs := make(chan error, n)
		for j := 0; j < n; j++ {
			go func() {
				errs <- sandboxtest.StartExecClose(context.Background(), ex, runID, fmt.Sprintf("r%d", j), "echo ok")
			}()
		}
		for j := 0; j < n; j++ {
			if err := <-errs; err != nil {
				// Counted, not fatal: how many a saturated node loses is
				// part of the measure; the first few say why.
				if failed++; failed <= 3 {
					b.Log(err)
				}
			}
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(failed)/float64(n*b.N), "failed/rollout")
	requests := 0
	for k, v := range p.Requests() {
		if k != "policy" && k != "delete-policy" {
			requests += v - before[k]
		}
	}
	throttled := 0
	for _, v := range p.Throttled() {
		throttled += v
	}
	b.ReportMetric(float64(n), "pods")
	b.ReportMetric(float64(requests)/float64(n*b.N), "api-requests/rollout")
	b.ReportMetric(float64(throttled), "throttled")
}

// agentImage builds an agent image (the test's agent binary at /rlmrun,
// nothing else) and imports it into the test cluster's containerd, as a
// user would publish one to their registry.
func agentImage(t testing.TB) string {
	t.Helper()
	sock := os.Getenv("RLMRUN_KUBE_CONTAINERD")
	testbin.Need(t, sock != "", "the test cluster's containerd (scripts/test sets RLMRUN_KUBE_CONTAINERD)")
	dir := t.TempDir()
	bin, err := os.ReadFile(agentBin)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "rlmrun"), bin, 0o755); err != nil {
		t.Fatal(err)
	}
	image := fmt.Sprintf("rlmrun.test/agent:%d", time.Now().UnixNano())
	steps := [][]string{
		{"tar", "-C", dir, "-cf", filepath.Join(dir, "agent.tar"), "rlmrun"},
		{"docker", "import", filepath.Join(dir, "agent.tar"), image},
		{"docker", "save", "-o", filepath.Join(dir, "image.tar"), image},
		{"ctr", "--address", sock, "-n", "k8s.io", "images", "import", filepath.Join(dir, "image.tar")},
		{"docker", "rmi", image},
	}
	for _, argv := range steps {
		if out, err := exec.Command(argv[0], argv[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%s: %v\n%s", strings.Join(argv, " "), err, out)
		}
	}
	t.Cleanup(func() {
		_ = exec.Command("ctr", "--address", sock, "-n", "k8s.io", "images", "rm", "docker.io/"+image).Run()
	})
	return image
}

// TestAgentImage: with agent_image the agent comes out of the user's image
// through an init container; nothing is uploaded, the exec only starts it.
func TestAgentImage(t *testing.T) {
	needCluster(t)
	image := agentImage(t)
	opts := options(TestImage)
	opts.Config.Kubernetes.AgentImage = image
	p, err := kubernetes.New(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Close() })
	sess, facts := sandboxtest.Start(t, p, settings())
	if facts.AgentUID != 1000 {
		t.Errorf("facts %+v", facts)
	}
	if rep := sandboxtest.Exec(t, sess, "echo $((6*7)); ls -l /.rlmrun | grep -c rlmrun"); rep.Stdout != "42\n1\n" {
		t.Errorf("cell: %+v", rep)
	}
}
