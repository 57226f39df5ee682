package docker

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/rlmrun/rlmrun/backends/procs"
	"github.com/rlmrun/rlmrun/backends/sandbox"
)

// user is the unprivileged user agents and workers run as.
const user = "1000:1000"

// Options configure the provider.
type Options struct {
	// AgentPath is the rlmrun binary copied into every container (a static
	// Linux binary: CGO_ENABLED=0).
	AgentPath string
	// Progress receives image pull progress.
	Progress io.Writer
	Config
}

// Config is the provider's own part of the spec's backend.sandbox section.
type Config struct {
	// Image is the containers' image.
	Image string `json:"image"`
	// Pull says when to pull it: always, if-missing (the default), never.
	Pull string `json:"pull"`
}

// Factory is the provider's sandbox.Factory: it reads image and pull from
// the spec's settings.
func Factory(ctx context.Context, opts sandbox.FactoryOptions) (sandbox.Provider, error) {
	o := Options{AgentPath: opts.AgentPath, Progress: opts.Progress}
	if len(opts.Config) > 0 {
		if err := json.Unmarshal(opts.Config, &o.Config); err != nil {
			return nil, fmt.Errorf("docker settings: %w", err)
		}
	}
	return New(ctx, o)
}

// Provider runs sandboxes as Docker containers.
type Provider struct {
	opts Options
	eng  *Engine

	mu      sync.Mutex
	images  map[string]error  // image checked (and pulled) once per run
	derived map[string]string // base image -> image with the agent binary

	agentOnce sync.Once
	agentTar  []byte
	agentSum  string
	agentErr  error
}

// New connects to the daemon (DOCKER_HOST and friends).
func New(ctx context.Context, opts Options) (*Provider, error) {
	eng, err := NewEngineFromEnv(ctx)
	if err != nil {
		if errors.Is(err, errUnreachable) {
			return nil, fmt.Errorf("%w: %v (install it with apt-get install -y docker.io and start dockerd, or set DOCKER_HOST)", sandbox.ErrNotInstalled, err)
		}
		return nil, err
	}
	return &Provider{opts: opts, eng: eng, images: map[string]error{}, derived: map[string]string{}}, nil
}

// Name is "docker".
func (p *Provider) Name() string { return "docker" }

// Close has nothing to release: containers are deleted one by one.
func (p *Provider) Close() error { return nil }

// Engine is the provider's Engine API client.
func (p *Provider) Engine() *Engine { return p.eng }

// ensureImage applies the pull policy, once per image and run.
func (p *Provider) ensureImage(ctx context.Context, ref, policy string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err, done := p.images[ref]; done {
		return err
	}
	err := func() error {
		if policy == "always" {
			return p.eng.Pull(ctx, ref, p.opts.Progress)
		}
		ok, err := p.eng.ImageExists(ctx, ref)
		if err != nil {
			return err
		}
		switch {
		case ok:
			return nil
		case policy == "never":
			return fmt.Errorf("%w: image %s is not on the Docker daemon (%s) and pull is never: pull or build it first", sandbox.ErrNotInstalled, ref, p.eng.Host())
		}
		return p.eng.Pull(ctx, ref, p.opts.Progress)
	}()
	// A failed pull may be a passing network problem: only successes are kept.
	if err == nil || errors.Is(err, sandbox.ErrNotInstalled) {
		p.images[ref] = err
	}
	return err
}

// agentArchive is a tar holding the agent binary, built once.
func (p *Provider) agentArchive() ([]byte, error) {
	p.agentOnce.Do(func() {
		bin, err := os.ReadFile(p.opts.AgentPath)
		if err != nil {
			p.agentErr = fmt.Errorf("agent binary: %w", err)
			return
		}
		var buf bytes.Buffer
		tw := tar.NewWriter(&buf)
		if err := tw.WriteHeader(&tar.Header{Name: ".rlmrun/", Mode: 0o755, Typeflag: tar.TypeDir}); err == nil {
			if err := tw.WriteHeader(&tar.Header{Name: ".rlmrun/rlmrun", Mode: 0o755, Size: int64(len(bin)), Typeflag: tar.TypeReg}); err == nil {
				_, _ = tw.Write(bin)
			}
		}
		p.agentErr = tw.Close()
		p.agentTar = buf.Bytes()
		sum := sha256.Sum256(bin)
		p.agentSum = hex.EncodeToString(sum[:6])
	})
	return p.agentTar, p.agentErr
}

type containerConfig struct {
	Image      string            `json:"Image"`
	Cmd        []string          `json:"Cmd"`
	User       string            `json:"User"`
	Env        []string          `json:"Env"`
	WorkingDir string            `json:"WorkingDir"`
	Labels     map[string]string `json:"Labels"`
	Hostname   string            `json:"Hostname"`
	HostConfig hostConfig        `json:"HostConfig"`
}

type hostConfig struct {
	NetworkMode    string            `json:"NetworkMode"`
	CapDrop        []string          `json:"CapDrop"`
	SecurityOpt    []string          `json:"SecurityOpt"`
	ReadonlyRootfs bool              `json:"ReadonlyRootfs"`
	Tmpfs          map[string]string `json:"Tmpfs"`
	PidsLimit      int64             `json:"PidsLimit"`
	Memory         int64             `json:"Memory"`
	MemorySwap     int64             `json:"MemorySwap"`
	NanoCPUs       int64             `json:"NanoCpus"`
	AutoRemove     bool              `json:"AutoRemove"`
}

type container struct {
	p  *Provider
	id string

	mu   sync.Mutex
	gone bool
}

// agentImage is the spec's image with the agent binary added at
// /.rlmrun/rlmrun: made once per base image and binary (copied in through
// the archive API, then committed, so a remote daemon works), and reused by
// every container, which then starts without a 10 MB copy of its own.
func (p *Provider) agentImage(ctx context.Context, base string) (string, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if img, ok := p.derived[base]; ok {
		return img, nil
	}
	archive, err := p.agentArchive()
	if err != nil {
		return "", err
	}
	var inspect struct {
		ID string `json:"Id"`
	}
	if err := p.eng.do(ctx, http.MethodGet, "/images/"+base+"/json", nil, nil, &inspect); err != nil {
		return "", fmt.Errorf("inspect image %s: %w", base, err)
	}
	baseID := strings.TrimPrefix(inspect.ID, "sha256:")
	if len(baseID) > 12 {
		baseID = baseID[:12]
	}
	tag := p.agentSum + "-" + baseID
	img := agentRepo + ":" + tag
	if ok, err := p.eng.ImageExists(ctx, img); err != nil {
		return "", err
	} else if ok {
		p.derived[base] = img
		return img, nil
	}
	var created struct {
		ID string `json:"Id"`
	}
	cfg := map[string]any{"Image": base, "Cmd": []string{"/.rlmrun/rlmrun"}, "Labels": map[string]string{sandbox.LabelManaged: "builder"}}
	if err := p.eng.do(ctx, http.MethodPost, "/containers/create", nil, cfg, &created); err != nil {
		return "", fmt.Errorf("prepare agent image: %w", err)
	}
	defer p.Remove(context.Background(), created.ID)
	if err := p.eng.do(ctx, http.MethodPut, "/containers/"+created.ID+"/archive", url.Values{"path": {"/"}}, bytes.NewReader(archive), nil); err != nil {
		return "", fmt.Errorf("copy the agent into the image: %w", err)
	}
	q := url.Values{"container": {created.ID}, "repo": {agentRepo}, "tag": {tag}, "comment": {"rlmrun agent on " + base}}
	if err := p.eng.do(ctx, http.MethodPost, "/commit", q, map[string]any{"Labels": map[string]string{labelAgentImage: "true"}}, nil); err != nil {
		return "", fmt.Errorf("commit agent image: %w", err)
	}
	p.derived[base] = img
	return img, nil
}

// agentRepo names the images that carry the agent binary.
const agentRepo = "rlmrun-agent"

// labelAgentImage marks them.
const labelAgentImage = "rlmrun.agent-image"

// Create makes and starts a container whose first process (the rlmrun
// binary as init) only keeps it alive: until its lifetime ends, or until
// the agent exec'd into it has come and gone.
func (p *Provider) Create(ctx context.Context, req sandbox.CreateRequest) (sandbox.Sandbox, error) {
	s := req.Settings
	if p.opts.Image == "" {
		return nil, fmt.Errorf("%w: no image: the docker provider needs backend.sandbox.image", sandbox.ErrNotInstalled)
	}
	if err := p.ensureImage(ctx, p.opts.Image, p.opts.Pull); err != nil {
		return nil, err
	}
	image, err := p.agentImage(ctx, p.opts.Image)
	if err != nil {
		return nil, err
	}
	network := "none"
	if s.HostNetwork {
		network = "host"
	}
	mem := s.MemoryBytes
	lifetime := s.Lifetime
	if lifetime <= 0 {
		lifetime = time.Hour
	}
	cfg := containerConfig{
		Image:      image,
		Cmd:        []string{sandbox.AgentPathInside, "sandbox-init", "--lifetime", lifetime.String(), "--wait-agent", "5m"},
		User:       user,
		Env:        []string{"PATH=/usr/local/bin:/usr/bin:/bin", "LANG=C.UTF-8", "HOME=/tmp"},
		WorkingDir: "/tmp",
		Labels:     req.Labels,
		Hostname:   "rlmrun",
		HostConfig: hostConfig{
			NetworkMode:    network,
			CapDrop:        []string{"ALL"},
			SecurityOpt:    []string{"no-new-privileges"},
			ReadonlyRootfs: true,
			Tmpfs:          map[string]string{"/tmp": fmt.Sprintf("rw,exec,nosuid,nodev,mode=1777,size=%d", s.DiskBytes)},
			PidsLimit:      int64(s.PIDs),
			Memory:         mem,
			MemorySwap:     mem,
			NanoCPUs:       int64(s.CPUCores * 1e9),
			AutoRemove:     true,
		},
	}
	var created struct {
		ID string `json:"Id"`
	}
	if err := p.eng.do(ctx, http.MethodPost, "/containers/create", url.Values{"name": {req.Name}}, cfg, &created); err != nil {
		return nil, fmt.Errorf("create container: %w", err)
	}
	c := &container{p: p, id: created.ID}
	if err := p.eng.do(ctx, http.MethodPost, "/containers/"+c.id+"/start", nil, nil, nil); err != nil {
		_ = c.Delete(context.Background())
		return nil, fmt.Errorf("start container: %w", err)
	}
	return c, nil
}

func (c *container) ID() string { return c.id }

// Start execs argv in the container; its stdin and stdout (demultiplexed
// from the attach stream) are the returned stream.
func (c *container) Start(ctx context.Context, argv []string) (sandbox.Process, error) {
	if len(argv) > 1 && argv[1] == "agent" {
		// The container's init stops the container once this agent is gone.
		argv = append([]string{argv[0], "agent", "--mark", AgentMark}, argv[2:]...)
	}
	var ex struct {
		ID string `json:"Id"`
	}
	err := c.p.eng.do(ctx, http.MethodPost, "/containers/"+c.id+"/exec", nil, map[string]any{
		"AttachStdin": true, "AttachStdout": true, "AttachStderr": true, "Tty": false,
		"Cmd": argv, "User": user, "WorkingDir": "/tmp",
		"Env": []string{"PATH=/usr/local/bin:/usr/bin:/bin", "LANG=C.UTF-8", "HOME=/tmp"},
	}, &ex)
	if err != nil {
		return nil, fmt.Errorf("exec in container: %w", err)
	}
	conn, br, err := c.p.eng.hijack(ctx, "/exec/"+ex.ID+"/start", map[string]any{"Detach": false, "Tty": false})
	if err != nil {
		return nil, fmt.Errorf("attach to exec: %w", err)
	}
	pr, pw := io.Pipe()
	stderr := procs.NewTail(8 << 10)
	go demux(br, pw, stderr)
	return procs.Stream{R: pr, W: conn, Stderr: stderr}, nil
}

// demux splits Docker's multiplexed attach stream: 8-byte frame headers
// (stream, 0, 0, 0, big-endian length), stdout is stream 1, stderr 2.
func demux(r io.Reader, stdout *io.PipeWriter, stderr io.Writer) {
	var hdr [8]byte
	for {
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			stdout.CloseWithError(io.EOF)
			return
		}
		n := int64(binary.BigEndian.Uint32(hdr[4:]))
		var dst io.Writer = io.Discard
		switch hdr[0] {
		case 1:
			dst = stdout
		case 2:
			dst = stderr
		}
		if _, err := io.CopyN(dst, r, n); err != nil {
			stdout.CloseWithError(io.EOF)
			return
		}
	}
}

// Delete kills and removes the container (and its anonymous volume).
func (c *container) Delete(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.gone {
		return nil
	}
	c.gone = true
	return c.p.Remove(ctx, c.id)
}

// List returns the containers carrying all the given labels.
func (p *Provider) List(ctx context.Context, sel map[string]string) ([]sandbox.Info, error) {
	var labels []string
	for k, v := range sel {
		labels = append(labels, k+"="+v)
	}
	filters, _ := json.Marshal(map[string][]string{"label": labels})
	var list []struct {
		ID     string            `json:"Id"`
		Labels map[string]string `json:"Labels"`
	}
	if err := p.eng.do(ctx, http.MethodGet, "/containers/json", url.Values{"all": {"1"}, "filters": {string(filters)}}, nil, &list); err != nil {
		return nil, err
	}
	out := make([]sandbox.Info, len(list))
	for i, c := range list {
		out[i] = sandbox.Info{ID: c.ID, Labels: c.Labels}
	}
	return out, nil
}

// Remove force-removes a container; one already gone is not an error.
func (p *Provider) Remove(ctx context.Context, id string) error {
	err := p.eng.do(ctx, http.MethodDelete, "/containers/"+id, url.Values{"force": {"1"}, "v": {"1"}}, nil, nil)
	var ae *APIError
	if IsNotFound(err) || (errors.As(err, &ae) && ae.Status == http.StatusConflict) {
		return nil // gone, or already being removed (AutoRemove)
	}
	if err != nil {
		return fmt.Errorf("remove container %s: %w", shortID(id), err)
	}
	return nil
}

func shortID(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

// Enforced says which limits containers get.
func (p *Provider) Enforced() string {
	return "docker: memory, pids, cpu (NanoCpus), tmpfs size: disk"
}
