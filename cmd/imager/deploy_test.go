package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"gopkg.in/yaml.v3"

	"github.com/imager-dev/imager/internal/policy"
)

// runFlags is what `imager run --help` says about the daemon's flags: each flag's name and the
// environment variables the binary reads.
type runFlags struct {
	names map[string]bool
	env   map[string]bool
}

func readRunFlags(t *testing.T) runFlags {
	t.Helper()
	var out bytes.Buffer
	require.Equal(t, 0, dispatch(context.Background(), []string{"run", "--help"}, &out, io.Discard))
	f := runFlags{names: map[string]bool{}, env: map[string]bool{}}
	for _, m := range regexp.MustCompile(`(?m)^\s+-([a-z-]+)`).FindAllStringSubmatch(out.String(), -1) {
		f.names[m[1]] = true
	}
	for _, m := range regexp.MustCompile(`\(env ([A-Z_]+)\)`).FindAllStringSubmatch(out.String(), -1) {
		f.env[m[1]] = true
	}
	require.True(t, f.names["listen"] && f.names["spool-dir"] && f.names["shutdown-grace"], out.String())
	require.True(t, f.env["DATABASE_URL"], out.String())
	return f
}

// requireRunArgs parses args (after "run") with the real flag set of `imager run` and returns
// the value of each --flag=value or --flag value.
func requireRunArgs(t *testing.T, where string, args []string) map[string]string {
	t.Helper()
	var stderr bytes.Buffer
	// --help after the args: the flag set parses every one of them first, then stops.
	code := dispatch(context.Background(), append(append([]string{"run"}, args...), "--help"), io.Discard, &stderr)
	require.Equalf(t, 0, code, "%s: imager run rejects %q: %s", where, args, stderr.String())
	vals := map[string]string{}
	for i := 0; i < len(args); i++ {
		a := strings.TrimLeft(args[i], "-")
		if k, v, ok := strings.Cut(a, "="); ok {
			vals[k] = v
			continue
		}
		if i+1 < len(args) && !strings.HasPrefix(args[i+1], "-") {
			vals[a] = args[i+1]
			i++
		}
	}
	return vals
}

func listenPort(t *testing.T, where, addr string) int {
	t.Helper()
	_, port, err := net.SplitHostPort(addr)
	require.NoError(t, err, "%s: --listen %q", where, addr)
	p, err := strconv.Atoi(port)
	require.NoError(t, err, "%s: --listen %q", where, addr)
	return p
}

func repoFile(t *testing.T, rel string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "..", rel))
	require.NoError(t, err)
	return b
}

func TestSystemdUnitMatchesTheBinary(t *testing.T) {
	flags := readRunFlags(t)
	unit := map[string][]string{}
	section := ""
	sc := bufio.NewScanner(bytes.NewReader(repoFile(t, "deploy/systemd/imager.service")))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || strings.HasPrefix(line, "#"):
		case strings.HasPrefix(line, "["):
			section = strings.Trim(line, "[]")
		default:
			k, v, ok := strings.Cut(line, "=")
			require.True(t, ok, "not key=value: %s", line)
			unit[section+"."+k] = append(unit[section+"."+k], v)
		}
	}
	one := func(key string) string {
		require.Len(t, unit[key], 1, key)
		return unit[key][0]
	}
	exec := strings.Fields(one("Service.ExecStart"))
	require.Equal(t, "/usr/local/bin/imager", exec[0])
	require.Equal(t, "run", exec[1])
	args := requireRunArgs(t, "imager.service", exec[2:])
	require.NotEmpty(t, args["listen"], "the unit serves /metrics, /healthz and /readyz")
	listenPort(t, "imager.service", args["listen"])
	require.Equal(t, "/var/lib/"+one("Service.StateDirectory")+"/spool", args["spool-dir"], "the spool lives in the StateDirectory")
	grace, err := time.ParseDuration(args["shutdown-grace"])
	require.NoError(t, err)
	stop, err := time.ParseDuration(one("Service.TimeoutStopSec"))
	require.NoError(t, err)
	require.Greater(t, stop, grace, "systemd must not kill imager before --shutdown-grace is over")

	require.Equal(t, "imager", one("Service.User"))
	require.Equal(t, "strict", one("Service.ProtectSystem"))
	require.Equal(t, "on-failure", one("Service.Restart"))
	require.Equal(t, "/bin/kill -HUP $MAINPID", one("Service.ExecReload"))
	require.NotEmpty(t, one("Service.EnvironmentFile"))
	for _, env := range unit["Service.Environment"] {
		name, _, _ := strings.Cut(env, "=")
		require.True(t, flags.env[name], "Environment=%s: imager run does not read %s", env, name)
	}
}

// k8sObject is the part of a Kubernetes object the checks read.
type k8sObject struct {
	APIVersion string `yaml:"apiVersion"`
	Kind       string `yaml:"kind"`
	Metadata   struct {
		Name string `yaml:"name"`
	} `yaml:"metadata"`
	Data       map[string]string `yaml:"data"`
	StringData map[string]string `yaml:"stringData"`
	Spec       struct {
		Replicas *int `yaml:"replicas"`
		Selector struct {
			MatchLabels map[string]string `yaml:"matchLabels"`
		} `yaml:"selector"`
		MinAvailable *int             `yaml:"minAvailable"`
		Template     k8sPodTemplate   `yaml:"template"`
		Ports        []k8sServicePort `yaml:"ports"`
	} `yaml:"spec"`
	// A Service's spec.selector is a plain map; read it on its own.
	ServiceSpec struct {
		Selector map[string]string `yaml:"selector"`
	} `yaml:"-"`
}

type k8sPodTemplate struct {
	Metadata struct {
		Labels map[string]string `yaml:"labels"`
	} `yaml:"metadata"`
	Spec struct {
		TerminationGracePeriodSeconds int            `yaml:"terminationGracePeriodSeconds"`
		Containers                    []k8sContainer `yaml:"containers"`
		Volumes                       []struct {
			Name      string `yaml:"name"`
			ConfigMap *struct {
				Name string `yaml:"name"`
			} `yaml:"configMap"`
			EmptyDir              any `yaml:"emptyDir"`
			PersistentVolumeClaim any `yaml:"persistentVolumeClaim"`
		} `yaml:"volumes"`
	} `yaml:"spec"`
}

type k8sContainer struct {
	Args []string `yaml:"args"`
	Env  []struct {
		Name      string `yaml:"name"`
		ValueFrom *struct {
			SecretKeyRef *struct {
				Name string `yaml:"name"`
				Key  string `yaml:"key"`
			} `yaml:"secretKeyRef"`
		} `yaml:"valueFrom"`
	} `yaml:"env"`
	Ports []struct {
		Name          string `yaml:"name"`
		ContainerPort int    `yaml:"containerPort"`
	} `yaml:"ports"`
	LivenessProbe  *k8sProbe `yaml:"livenessProbe"`
	ReadinessProbe *k8sProbe `yaml:"readinessProbe"`
	VolumeMounts   []struct {
		Name      string `yaml:"name"`
		MountPath string `yaml:"mountPath"`
	} `yaml:"volumeMounts"`
}

type k8sProbe struct {
	HTTPGet *struct {
		Path string `yaml:"path"`
		Port any    `yaml:"port"`
	} `yaml:"httpGet"`
}

type k8sServicePort struct {
	Name       string `yaml:"name"`
	Port       int    `yaml:"port"`
	TargetPort any    `yaml:"targetPort"`
}

// readManifests decodes every document of deploy/kubernetes/*.yaml, by kind and name.
func readManifests(t *testing.T) map[string]k8sObject {
	t.Helper()
	files, err := filepath.Glob(filepath.Join("..", "..", "deploy", "kubernetes", "*.yaml"))
	require.NoError(t, err)
	require.NotEmpty(t, files)
	objs := map[string]k8sObject{}
	for _, f := range files {
		b, err := os.ReadFile(f)
		require.NoError(t, err)
		dec := yaml.NewDecoder(bytes.NewReader(b))
		dec.KnownFields(false)
		for {
			var node yaml.Node
			err := dec.Decode(&node)
			if errors.Is(err, io.EOF) {
				break
			}
			require.NoError(t, err, f)
			var o k8sObject
			require.NoError(t, node.Decode(&o), f)
			if o.Kind == "Service" {
				var svc struct {
					Spec struct {
						Selector map[string]string `yaml:"selector"`
					} `yaml:"spec"`
				}
				require.NoError(t, node.Decode(&svc), f)
				o.ServiceSpec.Selector = svc.Spec.Selector
			}
			require.NotEmpty(t, o.Kind, f)
			objs[o.Kind+"/"+o.Metadata.Name] = o
		}
	}
	return objs
}

func TestKubernetesManifestsMatchTheBinary(t *testing.T) {
	flags := readRunFlags(t)
	objs := readManifests(t)
	dep, ok := objs["Deployment/imager"]
	require.True(t, ok, "a Deployment named imager: %v", objs)
	require.NotNil(t, dep.Spec.Replicas)
	require.Equal(t, 2, *dep.Spec.Replicas, "two replicas: one leads, one stands by")
	pod := dep.Spec.Template
	require.Equal(t, dep.Spec.Selector.MatchLabels, subset(pod.Metadata.Labels, dep.Spec.Selector.MatchLabels))
	require.Len(t, pod.Spec.Containers, 1)
	c := pod.Spec.Containers[0]

	require.NotEmpty(t, c.Args)
	require.Equal(t, "run", c.Args[0])
	args := requireRunArgs(t, "deployment.yaml", c.Args[1:])
	port := listenPort(t, "deployment.yaml", args["listen"])
	portName := ""
	for _, p := range c.Ports {
		if p.ContainerPort == port {
			portName = p.Name
		}
	}
	require.NotEmpty(t, portName, "a containerPort for --listen %s", args["listen"])
	probePort := func(p *k8sProbe, path string) {
		t.Helper()
		require.NotNil(t, p)
		require.NotNil(t, p.HTTPGet)
		require.Equal(t, path, p.HTTPGet.Path)
		require.Contains(t, []any{portName, port}, p.HTTPGet.Port, "the probe asks the --listen port")
	}
	probePort(c.LivenessProbe, "/healthz")
	probePort(c.ReadinessProbe, "/readyz")

	grace, err := time.ParseDuration(args["shutdown-grace"])
	require.NoError(t, err)
	require.Greater(t, time.Duration(pod.Spec.TerminationGracePeriodSeconds)*time.Second, grace)

	mounts := map[string]string{}
	for _, m := range c.VolumeMounts {
		mounts[m.MountPath] = m.Name
	}
	volumes := map[string]bool{}
	configMap := ""
	for _, v := range pod.Spec.Volumes {
		volumes[v.Name] = true
		if v.ConfigMap != nil && mounts[args["policies"]] == v.Name {
			configMap = v.ConfigMap.Name
		}
	}
	for _, path := range []string{args["policies"], args["spool-dir"]} {
		require.NotEmpty(t, path)
		require.True(t, volumes[mounts[path]], "%s is mounted from a volume of the pod", path)
	}
	cm, ok := objs["ConfigMap/"+configMap]
	require.True(t, ok, "--policies %s is mounted from a ConfigMap of the manifests", args["policies"])
	require.NotEmpty(t, cm.Data)
	for name, body := range cm.Data {
		_, err := policy.LoadBytes(name, []byte(body))
		require.NoError(t, err, "the ConfigMap's policies validate")
	}

	for _, e := range c.Env {
		require.True(t, flags.env[e.Name] || strings.HasPrefix(e.Name, "TENCENTCLOUD_"), "env %s is not read by imager", e.Name)
		if e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil {
			ref := e.ValueFrom.SecretKeyRef
			secret, ok := objs["Secret/"+ref.Name]
			require.True(t, ok, "Secret %s", ref.Name)
			require.Contains(t, secret.StringData, ref.Key)
		}
	}
	envNames := map[string]bool{}
	for _, e := range c.Env {
		envNames[e.Name] = true
	}
	for _, need := range []string{"DATABASE_URL", "TENCENTCLOUD_SECRET_ID", "TENCENTCLOUD_SECRET_KEY"} {
		require.True(t, envNames[need], "%s comes from the Secret", need)
	}

	pdb, ok := objs["PodDisruptionBudget/imager"]
	require.True(t, ok)
	require.NotNil(t, pdb.Spec.MinAvailable)
	require.Equal(t, 1, *pdb.Spec.MinAvailable)
	require.Equal(t, pdb.Spec.Selector.MatchLabels, subset(pod.Metadata.Labels, pdb.Spec.Selector.MatchLabels))

	svc, ok := objs["Service/imager-metrics"]
	require.True(t, ok)
	require.Equal(t, svc.ServiceSpec.Selector, subset(pod.Metadata.Labels, svc.ServiceSpec.Selector))
	require.Len(t, svc.Spec.Ports, 1)
	require.Contains(t, []any{portName, port}, svc.Spec.Ports[0].TargetPort)
}

// subset returns the entries of labels whose keys are in sel (equal to sel when sel matches).
func subset(labels, sel map[string]string) map[string]string {
	out := map[string]string{}
	for k := range sel {
		if v, ok := labels[k]; ok {
			out[k] = v
		}
	}
	return out
}

func TestDockerfileExposesTheListenPort(t *testing.T) {
	var expose, cmd string
	for _, line := range strings.Split(string(repoFile(t, "Dockerfile")), "\n") {
		switch {
		case strings.HasPrefix(line, "EXPOSE "):
			expose = strings.TrimSpace(strings.TrimPrefix(line, "EXPOSE "))
		case strings.HasPrefix(line, "CMD "):
			cmd = strings.TrimPrefix(line, "CMD ")
		}
	}
	var args []string
	require.NoError(t, json.Unmarshal([]byte(cmd), &args), "CMD in exec form")
	require.Equal(t, "run", args[0])
	vals := requireRunArgs(t, "Dockerfile", args[1:])
	require.Equal(t, strconv.Itoa(listenPort(t, "Dockerfile", vals["listen"])), expose)
}

// TestKubernetesWebConfigExampleMatchesTheBinary: the commented --web-config example of
// deployment.yaml names a flag `imager run` takes, read from the path the commented mount provides.
func TestKubernetesWebConfigExampleMatchesTheBinary(t *testing.T) {
	flags := readRunFlags(t)
	require.True(t, flags.names["web-config"] && flags.env["IMAGER_WEB_CONFIG"])
	body := string(repoFile(t, "deploy/kubernetes/deployment.yaml"))
	arg := regexp.MustCompile(`(?m)^\s*# - (--web-config=\S+)$`).FindStringSubmatch(body)
	require.NotNil(t, arg, "a commented --web-config argument")
	path := requireRunArgs(t, "deployment.yaml (commented)", []string{arg[1]})["web-config"]
	mount := regexp.MustCompile(`(?m)^\s*#\s+mountPath: (\S+)$`).FindStringSubmatch(body)
	require.NotNil(t, mount, "a commented mount for the web config")
	require.Equal(t, mount[1], filepath.Dir(path), "--web-config is read from the commented mount")
	require.Contains(t, body, "# - name: web-config")
	require.Contains(t, body, "scheme: HTTPS")
}
