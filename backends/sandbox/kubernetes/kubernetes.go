// Package kubernetes is the Kubernetes sandbox provider: one Pod per
// rollout, created at its first cell, hardened (non-root, read-only root,
// no capabilities, no service-account token), the agent started with
// pods/exec and its stdin and stdout carrying the agent's session. Files,
// tools and sub-LLM calls travel in that session, as with every provider,
// so a rollout's sandbox may run on any node of the cluster.
package kubernetes

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/rlmrun/rlmrun/backends"
	"github.com/rlmrun/rlmrun/backends/sandbox"
	"github.com/rlmrun/rlmrun/backends/sandbox/docker"
)

// Config is the provider's part of the spec's backend.sandbox section.
type Config struct {
	Image string `json:"image"`
	Pull  string `json:"pull"`
	// Kubernetes are the provider's own settings.
	Kubernetes Settings `json:"kubernetes"`
}

// Settings are backend.sandbox.kubernetes.
type Settings struct {
	Namespace       string            `json:"namespace"`
	Context         string            `json:"context"`
	Kubeconfig      string            `json:"kubeconfig"`
	RuntimeClass    string            `json:"runtime_class"`
	NodeSelector    map[string]string `json:"node_selector"`
	Tolerations     []json.RawMessage `json:"tolerations"`
	ServiceAccount  string            `json:"service_account"`
	ImagePullPolicy string            `json:"image_pull_policy"`
	PodLabels       map[string]string `json:"pod_labels"`
	PodAnnotations  map[string]string `json:"pod_annotations"`
	CreateQPS       float64           `json:"create_qps"`
	// AgentImage, when set, is an image holding the agent at /rlmrun,
	// copied in by an init container instead of streamed through exec.
	AgentImage string `json:"agent_image"`
}

// Options configure the provider.
type Options struct {
	// AgentPath is the rlmrun binary streamed into pods (a static Linux
	// binary: CGO_ENABLED=0).
	AgentPath string
	Config
}

// Factory is the provider's sandbox.Factory.
func Factory(ctx context.Context, opts sandbox.FactoryOptions) (sandbox.Provider, error) {
	o := Options{AgentPath: opts.AgentPath}
	if len(opts.Config) > 0 {
		if err := json.Unmarshal(opts.Config, &o.Config); err != nil {
			return nil, fmt.Errorf("kubernetes settings: %w", err)
		}
	}
	return New(ctx, o)
}

// Provider runs sandboxes as Pods.
type Provider struct {
	opts Options
	api  *apiClient
	ns   string

	mu       sync.Mutex
	policies map[string]bool // runs whose NetworkPolicy exists

	agentOnce sync.Once
	agent     []byte
	agentErr  error
}

// New loads the kubeconfig and checks the cluster answers.
func New(ctx context.Context, opts Options) (*Provider, error) {
	k := opts.Kubernetes
	rc, err := loadConfig(k.Kubeconfig, k.Context)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", sandbox.ErrNotInstalled, err)
	}
	ns := k.Namespace
	if ns == "" {
		ns = rc.namespace
	}
	if ns == "" {
		ns = "default"
	}
	p := &Provider{opts: opts, api: newAPIClient(rc, k.CreateQPS), ns: ns, policies: map[string]bool{}}
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var v struct {
		GitVersion string `json:"gitVersion"`
	}
	if err := p.api.do(cctx, "version", http.MethodGet, "/version", nil, &v); err != nil {
		return nil, fmt.Errorf("%w: the cluster (%s, %s) does not answer: %v", sandbox.ErrNotInstalled, rc.server, rc.source, err)
	}
	return p, nil
}

// Name is "kubernetes".
func (p *Provider) Name() string { return "kubernetes" }

// Namespace is where the provider's pods go.
func (p *Provider) Namespace() string { return p.ns }

// Requests are the API requests made so far, by kind (create, watch,
// exec, delete, ...).
func (p *Provider) Requests() map[string]int { return p.api.requests.snapshot() }

// Throttled counts, by kind, the API's answers that asked rlmrun to slow
// down (HTTP 429), each retried after a back-off.
func (p *Provider) Throttled() map[string]int { return p.api.throttled.snapshot() }

// Close removes the NetworkPolicies the provider made for its runs.
func (p *Provider) Close() error {
	p.mu.Lock()
	runs := make([]string, 0, len(p.policies))
	for r := range p.policies {
		runs = append(runs, r)
	}
	p.policies = map[string]bool{}
	p.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var errs []string
	for _, r := range runs {
		if err := p.deletePolicy(ctx, policyName(r)); err != nil {
			errs = append(errs, err.Error())
		}
	}
	if len(errs) > 0 {
		return errors.New(strings.Join(errs, "; "))
	}
	return nil
}

// The pod's layout: the agent in an emptyDir at /.rlmrun, the working
// directory in an emptyDir at /tmp (sized by disk_size_gb), and the root
// filesystem read-only.
const (
	container  = "sandbox"
	agentDir   = "/.rlmrun"
	agentBytes = 128 << 20 // the agent volume's size limit
	uid        = 1000
)

// Labels and annotations rlmrun puts on pods. Label values must be short
// and plain, so selection uses labels and the exact values (ids, owner)
// are annotations.
const (
	annotationPrefix = "rlmrun.dev/"
	// LabelExpired is set by List on a pod past its lifetime.
	labelCreated  = "rlmrun.created"
	labelLifetime = "rlmrun.lifetime"
)

// Create makes the rollout's pod, waits for it to run and puts the agent in.
func (p *Provider) Create(ctx context.Context, req sandbox.CreateRequest) (sandbox.Sandbox, error) {
	if p.opts.Image == "" {
		return nil, fmt.Errorf("%w: backend.sandbox.image is not set: the kubernetes provider needs an image with /bin/sh", sandbox.ErrNotInstalled)
	}
	run := req.Labels[sandbox.LabelRun]
	if !req.Settings.HostNetwork {
		if err := p.ensurePolicy(ctx, run, req.Labels); err != nil {
			return nil, err
		}
	}
	name := podName(req.Name)
	pod := p.podSpec(name, req)
	var created struct {
		Metadata struct {
			ResourceVersion string `json:"resourceVersion"`
		} `json:"metadata"`
	}
	if err := p.api.do(ctx, "create", http.MethodPost, fmt.Sprintf("/api/v1/namespaces/%s/pods", p.ns), pod, &created); err != nil {
		return nil, fmt.Errorf("create pod %s: %w", name, err)
	}
	sb := &podSandbox{p: p, name: name}
	if err := p.waitRunning(ctx, name, created.Metadata.ResourceVersion); err != nil {
		_ = sb.Delete(context.Background())
		return nil, err
	}
	// Without an agent image the agent goes in with its own start (one
	// exec, not two: see Start).
	sb.install = p.opts.Kubernetes.AgentImage == ""
	return sb, nil
}

// podName is a pod name (a DNS label: lowercase, digits, '-', <= 63) for
// a sandbox name, unique by the hash it ends with.
func podName(sandboxName string) string {
	sum := sha256.Sum256([]byte(sandboxName))
	var b strings.Builder
	for _, r := range strings.ToLower(sandboxName) {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9':
			b.WriteRune(r)
		default:
			b.WriteByte('-')
		}
	}
	base := strings.Trim(b.String(), "-")
	if len(base) > 50 {
		base = strings.Trim(base[:50], "-")
	}
	return base + "-" + hex.EncodeToString(sum[:3])
}

// labelValue is v as a label value (<= 63 of [A-Za-z0-9._-], alphanumeric
// at both ends), or "" when it cannot be.
func labelValue(v string) string {
	var b strings.Builder
	for _, r := range v {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '.', r == '_', r == '-':
			b.WriteRune(r)
		default:
			b.WriteByte('_')
		}
	}
	s := b.String()
	if len(s) > 63 {
		s = s[:63]
	}
	return strings.Trim(s, "._-")
}

// podSpec is the rollout's pod.
func (p *Provider) podSpec(name string, req sandbox.CreateRequest) map[string]any {
	k := p.opts.Kubernetes
	set := req.Settings
	labels := map[string]string{}
	for key, v := range k.PodLabels {
		labels[key] = v
	}
	annotations := map[string]string{}
	for key, v := range k.PodAnnotations {
		annotations[key] = v
	}
	for key, v := range req.Labels {
		if lv := labelValue(v); lv != "" && strings.HasPrefix(key, "rlmrun.") {
			labels[key] = lv
		}
		annotations[annotationPrefix+key] = v
	}
	annotations[annotationPrefix+labelLifetime] = set.Lifetime.String()
	resources := map[string]any{}
	limits := map[string]string{}
	if set.CPUCores > 0 {
		limits["cpu"] = fmt.Sprintf("%dm", int64(set.CPUCores*1000))
	}
	if set.MemoryBytes > 0 {
		limits["memory"] = strconv.FormatInt(set.MemoryBytes, 10)
	}
	if set.DiskBytes > 0 {
		limits["ephemeral-storage"] = strconv.FormatInt(set.DiskBytes+agentBytes, 10)
	}
	if len(limits) > 0 {
		// Requests = limits: the Guaranteed QoS class.
		resources = map[string]any{"requests": limits, "limits": limits}
	}
	tmp := map[string]any{}
	if set.DiskBytes > 0 {
		tmp["sizeLimit"] = strconv.FormatInt(set.DiskBytes, 10)
	}
	securityContext := map[string]any{
		"runAsNonRoot":             true,
		"runAsUser":                uid,
		"runAsGroup":               uid,
		"readOnlyRootFilesystem":   true,
		"allowPrivilegeEscalation": false,
		"privileged":               false,
		"capabilities":             map[string]any{"drop": []string{"ALL"}},
		"seccompProfile":           map[string]any{"type": "RuntimeDefault"},
	}
	mounts := []map[string]any{
		{"name": "agent", "mountPath": agentDir},
		{"name": "tmp", "mountPath": "/tmp"},
	}
	lifetime := set.Lifetime
	if lifetime <= 0 {
		lifetime = defaultLifetime
	}
	// The container's first process waits for the agent to be put in,
	// then is rlmrun's sandbox-init: it reaps orphans and ends the pod
	// when the agent has gone (the runner's connection dropped) or at the
	// end of its lifetime.
	// It polls once a second: the agent starts by itself (the exec that
	// puts it in becomes it), so the init's start is off the rollout's
	// path, and hundreds of pods waiting on a busy node fork little. Ten
	// minutes allow a saturated node; a pod whose runner never came ends
	// then (and `rlmrun cleanup` removes it).
	initArgs := fmt.Sprintf("%s sandbox-init --lifetime %s --wait-agent 10m", sandbox.AgentPathInside, lifetime)
	script := fmt.Sprintf("i=0; while [ ! -x %s ]; do i=$((i+1)); [ $i -gt 600 ] && exit 0; sleep 1; done; exec %s", sandbox.AgentPathInside, initArgs)
	main := map[string]any{
		"name":            container,
		"image":           p.opts.Image,
		"command":         []string{"/bin/sh", "-c", script},
		"resources":       resources,
		"securityContext": securityContext,
		"volumeMounts":    mounts,
		"workingDir":      "/tmp",
		"env": []map[string]string{
			{"name": "PATH", "value": "/usr/local/bin:/usr/bin:/bin"},
			{"name": "LANG", "value": "C.UTF-8"},
			{"name": "HOME", "value": "/tmp"},
		},
		"terminationMessagePolicy": "FallbackToLogsOnError",
	}
	if pp := p.pullPolicy(); pp != "" {
		main["imagePullPolicy"] = pp
	}
	spec := map[string]any{
		"containers":                    []any{main},
		"restartPolicy":                 "Never",
		"automountServiceAccountToken":  false,
		"enableServiceLinks":            false,
		"terminationGracePeriodSeconds": 1,
		"activeDeadlineSeconds":         int64(lifetime.Seconds()) + 60,
		"securityContext": map[string]any{
			"runAsNonRoot":   true,
			"runAsUser":      uid,
			"runAsGroup":     uid,
			"fsGroup":        uid,
			"seccompProfile": map[string]any{"type": "RuntimeDefault"},
		},
		"volumes": []any{
			map[string]any{"name": "agent", "emptyDir": map[string]any{"sizeLimit": strconv.Itoa(agentBytes)}},
			map[string]any{"name": "tmp", "emptyDir": tmp},
		},
	}
	if set.HostNetwork {
		spec["hostNetwork"] = true
	}
	if k.RuntimeClass != "" {
		spec["runtimeClassName"] = k.RuntimeClass
	}
	if len(k.NodeSelector) > 0 {
		spec["nodeSelector"] = k.NodeSelector
	}
	if len(k.Tolerations) > 0 {
		spec["tolerations"] = k.Tolerations
	}
	if k.ServiceAccount != "" {
		spec["serviceAccountName"] = k.ServiceAccount
	}
	if k.AgentImage != "" {
		spec["initContainers"] = []any{map[string]any{
			"name":            "agent",
			"image":           k.AgentImage,
			"command":         []string{"/rlmrun", "sandbox-install", sandbox.AgentPathInside},
			"securityContext": securityContext,
			"volumeMounts":    []map[string]any{{"name": "agent", "mountPath": agentDir}},
		}}
	}
	return map[string]any{
		"apiVersion": "v1",
		"kind":       "Pod",
		"metadata":   map[string]any{"name": name, "namespace": p.ns, "labels": labels, "annotations": annotations},
		"spec":       spec,
	}
}

// pullPolicy maps the spec's pull (always, if-missing, never) unless
// image_pull_policy says otherwise.
func (p *Provider) pullPolicy() string {
	if pp := p.opts.Kubernetes.ImagePullPolicy; pp != "" {
		return pp
	}
	switch p.opts.Pull {
	case "always":
		return "Always"
	case "never":
		return "Never"
	case "if-missing":
		return "IfNotPresent"
	}
	return ""
}

// defaultLifetime bounds a pod whose spec sets no lifetime: its
// activeDeadlineSeconds, and when other hosts' cleanups may remove it.
const defaultLifetime = 24 * time.Hour

// podStatus is the part of a pod's status that tells whether it runs, or
// why not.
type podStatus struct {
	Metadata struct {
		Name              string            `json:"name"`
		CreationTimestamp time.Time         `json:"creationTimestamp"`
		Annotations       map[string]string `json:"annotations"`
		Labels            map[string]string `json:"labels"`
		DeletionTimestamp *time.Time        `json:"deletionTimestamp"`
	} `json:"metadata"`
	Status struct {
		Phase      string `json:"phase"`
		Reason     string `json:"reason"`
		Message    string `json:"message"`
		Conditions []struct {
			Type    string `json:"type"`
			Status  string `json:"status"`
			Reason  string `json:"reason"`
			Message string `json:"message"`
		} `json:"conditions"`
		InitContainerStatuses []containerStatus `json:"initContainerStatuses"`
		ContainerStatuses     []containerStatus `json:"containerStatuses"`
	} `json:"status"`
}

type containerStatus struct {
	Name  string `json:"name"`
	State struct {
		Waiting *struct {
			Reason  string `json:"reason"`
			Message string `json:"message"`
		} `json:"waiting"`
		Running    *struct{} `json:"running"`
		Terminated *struct {
			Reason   string `json:"reason"`
			Message  string `json:"message"`
			ExitCode int    `json:"exitCode"`
		} `json:"terminated"`
	} `json:"state"`
}

// Waiting reasons that no wait will cure.
var fatalWaiting = map[string]bool{
	"ErrImageNeverPull": true, "InvalidImageName": true, "CreateContainerConfigError": true,
	"CreateContainerError": true, "RunContainerError": true,
}

// waitRunning watches the pod until its container runs. A pod that cannot
// run fails at once when the reason is final, else when ctx ends (the
// startup timeout), naming the last reason it was given.
func (p *Provider) waitRunning(ctx context.Context, name, rv string) error {
	last := "the pod was created"
	q := url.Values{"watch": {"1"}, "fieldSelector": {"metadata.name=" + name}, "allowWatchBookmarks": {"false"}}
	if rv != "" {
		q.Set("resourceVersion", rv)
	}
	path := fmt.Sprintf("/api/v1/namespaces/%s/pods%s", p.ns, query(q))
	err := p.api.watch(ctx, path, func(typ string, obj json.RawMessage) (bool, error) {
		if typ == "DELETED" {
			return true, fmt.Errorf("pod %s was deleted before it ran", name)
		}
		var ps podStatus
		if err := json.Unmarshal(obj, &ps); err != nil {
			return false, nil
		}
		running, why, fatal := podState(ps)
		if why != "" {
			last = why
		}
		if running {
			return true, nil
		}
		if fatal {
			return true, fmt.Errorf("pod %s cannot run: %s", name, why)
		}
		return false, nil
	})
	if err != nil && ctx.Err() != nil {
		return fmt.Errorf("pod %s did not run in time: %s", name, last)
	}
	return err
}

// podState reads whether the pod's container runs, and if not why.
func podState(ps podStatus) (running bool, why string, fatal bool) {
	st := ps.Status
	switch st.Phase {
	case "Failed", "Succeeded":
		why = fmt.Sprintf("it ended (%s): %s %s", st.Phase, st.Reason, st.Message)
		for _, c := range st.ContainerStatuses {
			if t := c.State.Terminated; t != nil {
				why = fmt.Sprintf("its container ended (%s, exit %d): %s", t.Reason, t.ExitCode, strings.TrimSpace(t.Message))
			}
		}
		return false, why, true
	}
	for _, c := range st.Conditions {
		if c.Type == "PodScheduled" && c.Status == "False" {
			why = fmt.Sprintf("it is not scheduled (%s): %s", c.Reason, c.Message)
		}
	}
	for _, cs := range append(append([]containerStatus{}, st.InitContainerStatuses...), st.ContainerStatuses...) {
		if w := cs.State.Waiting; w != nil && w.Reason != "" && w.Reason != "ContainerCreating" && w.Reason != "PodInitializing" {
			why = fmt.Sprintf("container %s is waiting (%s): %s", cs.Name, w.Reason, w.Message)
			if fatalWaiting[w.Reason] {
				return false, why, true
			}
		}
		if t := cs.State.Terminated; t != nil && t.ExitCode != 0 {
			return false, fmt.Sprintf("container %s failed (%s, exit %d): %s", cs.Name, t.Reason, t.ExitCode, strings.TrimSpace(t.Message)), true
		}
		if cs.Name == container && cs.State.Running != nil {
			return true, "", false
		}
	}
	return false, why, false
}

// agentBinary is the agent, read once.
func (p *Provider) agentBinary() ([]byte, error) {
	p.agentOnce.Do(func() {
		p.agent, p.agentErr = os.ReadFile(p.opts.AgentPath)
		if p.agentErr != nil {
			p.agentErr = fmt.Errorf("agent binary: %w", p.agentErr)
		}
	})
	return p.agent, p.agentErr
}

// installScript streams the agent into the pod's agent volume (the image
// needs /bin/sh, head, chmod and mv) under a temporary name, renames it
// (the container's first process waits to see it), says so on stdout and
// becomes the agent: "$@" is the agent's command line. The runner writes
// nothing past the agent's bytes until it has read the mark, so a head
// that reads ahead (BusyBox's) cannot swallow the session's first bytes.
func installScript(size int) string {
	part := sandbox.AgentPathInside + ".part"
	return fmt.Sprintf("head -c %d > %s && chmod 755 %s && mv %s %s && echo %s && exec \"$@\"",
		size, part, part, part, sandbox.AgentPathInside, installedMark)
}

// installedMark is the line the install script prints before the agent
// starts.
const installedMark = "rlmrun-agent-installed"

// install writes the agent into s (running installScript) and reads up
// to the mark.
func install(ctx context.Context, s *execStream, bin []byte) error {
	werr := make(chan error, 1)
	go func() {
		_, err := s.Write(bin)
		werr <- err
	}()
	mark := make([]byte, len(installedMark)+1)
	read := make(chan error, 1)
	go func() {
		_, err := io.ReadFull(s, mark)
		read <- err
	}()
	var err error
	select {
	case err = <-read:
	case <-ctx.Done():
		err = ctx.Err()
	}
	if err == nil && string(mark) != installedMark+"\n" {
		err = fmt.Errorf("unexpected output %q", mark)
	}
	if err != nil {
		if d := s.Diagnostics(); d != "" {
			err = fmt.Errorf("%w (%s)", err, d)
		}
		return err
	}
	return <-werr
}

// policyName is the name of a run's NetworkPolicy.
func policyName(run string) string { return podName("rlmrun-net-" + run) }

// ensurePolicy makes the run's deny-all NetworkPolicy (once per run): the
// run's pods get no traffic in or out. The tunnel needs none: it rides the
// exec stream. Enforcement is the CNI plugin's (Calico, Cilium, ...).
func (p *Provider) ensurePolicy(ctx context.Context, run string, labels map[string]string) error {
	p.mu.Lock()
	done := p.policies[run]
	p.mu.Unlock()
	if done {
		return nil
	}
	meta := map[string]string{sandbox.LabelManaged: "true", sandbox.LabelRun: labelValue(run)}
	annotations := map[string]string{}
	for k, v := range labels {
		if strings.HasPrefix(k, "rlmrun.owner.") {
			meta[k] = labelValue(v)
			annotations[annotationPrefix+k] = v
		}
	}
	annotations[annotationPrefix+sandbox.LabelRun] = run
	policy := map[string]any{
		"apiVersion": "networking.k8s.io/v1",
		"kind":       "NetworkPolicy",
		"metadata":   map[string]any{"name": policyName(run), "namespace": p.ns, "labels": meta, "annotations": annotations},
		"spec": map[string]any{
			"podSelector": map[string]any{"matchLabels": map[string]string{sandbox.LabelRun: labelValue(run)}},
			"policyTypes": []string{"Ingress", "Egress"},
		},
	}
	err := p.api.do(ctx, "policy", http.MethodPost, fmt.Sprintf("/apis/networking.k8s.io/v1/namespaces/%s/networkpolicies", p.ns), policy, nil)
	if err != nil && !isConflict(err) {
		return fmt.Errorf("create the run's NetworkPolicy: %w", err)
	}
	p.mu.Lock()
	p.policies[run] = true
	p.mu.Unlock()
	return nil
}

func (p *Provider) deletePolicy(ctx context.Context, name string) error {
	err := p.api.do(ctx, "delete-policy", http.MethodDelete, fmt.Sprintf("/apis/networking.k8s.io/v1/namespaces/%s/networkpolicies/%s", p.ns, name), nil, nil)
	if err != nil && !isNotFound(err) {
		return fmt.Errorf("delete NetworkPolicy %s: %w", name, err)
	}
	return nil
}

// podSandbox is one rollout's pod.
type podSandbox struct {
	p    *Provider
	name string

	mu      sync.Mutex
	install bool // the agent is still to be put in, by the first agent started
}

func (s *podSandbox) ID() string { return s.name }

// Start runs argv in the pod's container; its stdin and stdout are the
// stream.
func (s *podSandbox) Start(ctx context.Context, argv []string) (sandbox.Process, error) {
	if len(argv) > 1 && argv[1] == "agent" {
		// The pod's init ends the pod once this agent is gone.
		argv = append([]string{argv[0], "agent", "--mark", docker.AgentMark}, argv[2:]...)
	}
	s.mu.Lock()
	put := s.install && argv[0] == sandbox.AgentPathInside
	s.install = s.install && !put
	s.mu.Unlock()
	if !put {
		return s.p.api.exec(ctx, s.p.ns, s.name, container, argv)
	}
	bin, err := s.p.agentBinary()
	if err != nil {
		return nil, err
	}
	cmd := append([]string{"/bin/sh", "-c", installScript(len(bin)), "sh"}, argv...)
	proc, err := s.p.api.exec(ctx, s.p.ns, s.name, container, cmd)
	if err != nil {
		return nil, err
	}
	if err := install(ctx, proc, bin); err != nil {
		_ = proc.Close()
		return nil, fmt.Errorf("put the agent into pod %s: %w", s.name, err)
	}
	return proc, nil
}

// Delete removes the pod at once (no grace period: nothing in it is
// worth waiting for).
func (s *podSandbox) Delete(ctx context.Context) error { return s.p.Remove(ctx, s.name) }

// Remove deletes a pod.
func (p *Provider) Remove(ctx context.Context, id string) error {
	q := url.Values{"gracePeriodSeconds": {"0"}}
	body := map[string]any{"apiVersion": "v1", "kind": "DeleteOptions", "gracePeriodSeconds": 0, "propagationPolicy": "Background"}
	err := p.api.do(ctx, "delete", http.MethodDelete, fmt.Sprintf("/api/v1/namespaces/%s/pods/%s%s", p.ns, id, query(q)), body, nil)
	if err != nil && !isNotFound(err) {
		return fmt.Errorf("delete pod %s: %w", id, err)
	}
	return nil
}

// List returns the provider's pods carrying the labels, their exact
// labels read back from the annotations; a pod past its lifetime is marked
// expired, so cleanup may remove it whoever owns it.
func (p *Provider) List(ctx context.Context, labels map[string]string) ([]sandbox.Info, error) {
	var sel []string
	for k, v := range labels {
		sel = append(sel, k+"="+labelValue(v))
	}
	sort.Strings(sel)
	var list struct {
		Items []podStatus `json:"items"`
	}
	q := url.Values{"labelSelector": {strings.Join(sel, ",")}}
	if err := p.api.do(ctx, "list", http.MethodGet, fmt.Sprintf("/api/v1/namespaces/%s/pods%s", p.ns, query(q)), nil, &list); err != nil {
		return nil, err
	}
	var out []sandbox.Info
	for _, it := range list.Items {
		info := sandbox.Info{ID: it.Metadata.Name, Labels: exactLabels(it.Metadata.Labels, it.Metadata.Annotations)}
		if expired(it.Metadata.CreationTimestamp, it.Metadata.Annotations[annotationPrefix+labelLifetime]) {
			info.Labels[sandbox.LabelExpired] = "true"
		}
		out = append(out, info)
	}
	return out, nil
}

// exactLabels are an object's labels with rlmrun's exact values (kept in
// annotations) in place of their label forms.
func exactLabels(labels, annotations map[string]string) map[string]string {
	out := map[string]string{}
	for k, v := range labels {
		out[k] = v
	}
	for k, v := range annotations {
		if key, ok := strings.CutPrefix(k, annotationPrefix); ok {
			out[key] = v
		}
	}
	return out
}

func expired(created time.Time, lifetime string) bool {
	d, err := time.ParseDuration(lifetime)
	if err != nil || created.IsZero() {
		return false
	}
	if d <= 0 {
		d = defaultLifetime // what the pod's deadline was made of
	}
	return time.Since(created) > d
}

// Leftovers are the NetworkPolicies of killed runs (their pods are
// sandboxes, which sandbox.Leftovers finds): a backends.Sweeper.
func (p *Provider) Leftovers(ctx context.Context, runID string) ([]backends.Leftover, error) {
	sel := sandbox.LabelManaged + "=true"
	if runID != "" {
		sel += "," + sandbox.LabelRun + "=" + labelValue(runID)
	}
	var list struct {
		Items []struct {
			Metadata struct {
				Name        string            `json:"name"`
				Labels      map[string]string `json:"labels"`
				Annotations map[string]string `json:"annotations"`
			} `json:"metadata"`
		} `json:"items"`
	}
	q := url.Values{"labelSelector": {sel}}
	if err := p.api.do(ctx, "list", http.MethodGet, fmt.Sprintf("/apis/networking.k8s.io/v1/namespaces/%s/networkpolicies%s", p.ns, query(q)), nil, &list); err != nil {
		return nil, fmt.Errorf("list NetworkPolicies: %w", err)
	}
	var out []backends.Leftover
	for _, it := range list.Items {
		labels := exactLabels(it.Metadata.Labels, it.Metadata.Annotations)
		if sandbox.OwnerAlive(labels) {
			continue
		}
		name := it.Metadata.Name
		out = append(out, backends.Leftover{
			What:   fmt.Sprintf("kubernetes NetworkPolicy %s/%s (run %s)", p.ns, name, labels[sandbox.LabelRun]),
			Remove: func(ctx context.Context) error { return p.deletePolicy(ctx, name) },
		})
	}
	return out, nil
}

var (
	_ sandbox.Provider = (*Provider)(nil)
	_ backends.Sweeper = (*Provider)(nil)
)
