package rrfacts

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/client-go/rest"

	"github.com/rrguard/rrguard/apis/kubernaut/v1alpha1"
)

// object is how the index decodes an RR: the fields a decision reads and nothing else, so the
// JSON decoder skips the payload, labels, managed fields and every other status field instead of
// allocating them. It is garbage as soon as its facts are taken.
type object struct {
	metav1.TypeMeta `json:",inline"`
	Meta            objectMeta `json:"metadata"`
	Spec            struct {
		SignalFingerprint string `json:"signalFingerprint"`
	} `json:"spec"`
	Status struct {
		OverallPhase     string `json:"overallPhase"`
		CompletionStatus *struct {
			Outcome string `json:"outcome"`
		} `json:"completionStatus"`
		RoutingStatus *struct {
			NextAllowedExecution *metav1.Time `json:"nextAllowedExecution"`
		} `json:"routingStatus"`
	} `json:"status"`
}

type objectMeta struct {
	Name              string       `json:"name"`
	Namespace         string       `json:"namespace"`
	ResourceVersion   string       `json:"resourceVersion"`
	CreationTimestamp metav1.Time  `json:"creationTimestamp"`
	DeletionTimestamp *metav1.Time `json:"deletionTimestamp"`
	Finalizers        []string     `json:"finalizers"`
	// Annotations are read for one key: a watch-list stream ends with a bookmark that carries
	// k8s.io/initial-events-end, and the reflector waits for it.
	Annotations map[string]string `json:"annotations"`
}

// GetObjectMeta lets client-go's meta.Accessor read the object's key and resourceVersion.
func (o *object) GetObjectMeta() metav1.Object {
	return &metav1.ObjectMeta{
		Name: o.Meta.Name, Namespace: o.Meta.Namespace, ResourceVersion: o.Meta.ResourceVersion,
		CreationTimestamp: o.Meta.CreationTimestamp, DeletionTimestamp: o.Meta.DeletionTimestamp,
		Finalizers: o.Meta.Finalizers, Annotations: o.Meta.Annotations,
	}
}

func (o *object) DeepCopyObject() runtime.Object {
	c := *o
	c.Meta.Finalizers = append([]string(nil), o.Meta.Finalizers...)
	if o.Meta.Annotations != nil {
		c.Meta.Annotations = make(map[string]string, len(o.Meta.Annotations))
		for k, v := range o.Meta.Annotations {
			c.Meta.Annotations[k] = v
		}
	}
	return &c
}

type objectList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata"`
	Items           []object `json:"items"`
}

func (l *objectList) DeepCopyObject() runtime.Object {
	c := *l
	c.Items = make([]object, len(l.Items))
	for i := range l.Items {
		c.Items[i] = *l.Items[i].DeepCopyObject().(*object)
	}
	return &c
}

// restClient talks to the RR resource with the slim types above.
func restClient(cfg *rest.Config) (*rest.RESTClient, error) {
	scheme := runtime.NewScheme()
	gv := v1alpha1.GroupVersion
	scheme.AddKnownTypeWithName(gv.WithKind("RemediationRequest"), &object{})
	scheme.AddKnownTypeWithName(gv.WithKind("RemediationRequestList"), &objectList{})
	metav1.AddToGroupVersion(scheme, gv)
	c := rest.CopyConfig(cfg)
	c.GroupVersion = &schema.GroupVersion{Group: gv.Group, Version: gv.Version}
	c.APIPath = "/apis"
	c.ContentType = runtime.ContentTypeJSON // CRDs speak no protobuf
	c.NegotiatedSerializer = serializer.NewCodecFactory(scheme).WithoutConversion()
	if c.UserAgent == "" {
		c.UserAgent = rest.DefaultKubernetesUserAgent() + " rrguard-facts"
	}
	return rest.RESTClientFor(c)
}
