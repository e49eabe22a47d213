package release

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"github.com/sirupsen/logrus"
)

// EC2API is the part of the EC2 API an AMI import uses (an *ec2.Client
// satisfies it; tests use a fake since EC2 cannot run here).
type EC2API interface {
	ImportSnapshot(ctx context.Context, in *ec2.ImportSnapshotInput, opts ...func(*ec2.Options)) (*ec2.ImportSnapshotOutput, error)
	DescribeImportSnapshotTasks(ctx context.Context, in *ec2.DescribeImportSnapshotTasksInput, opts ...func(*ec2.Options)) (*ec2.DescribeImportSnapshotTasksOutput, error)
	RegisterImage(ctx context.Context, in *ec2.RegisterImageInput, opts ...func(*ec2.Options)) (*ec2.RegisterImageOutput, error)
}

// AMIOptions describe an AMI import.
type AMIOptions struct {
	Name         string        // AMI name (required)
	Description  string        // optional
	Architecture string        // x86_64 (default) or arm64
	BootMode     string        // uefi-preferred (default), uefi or legacy-bios
	RoleName     string        // VM Import service role; default "vmimport"
	VolumeType   string        // root EBS volume type; default gp3
	PollInterval time.Duration // default 15s
}

func (o *AMIOptions) check() error {
	if o.Name == "" {
		return &Error{Path: "--name", Msg: "an AMI name is required"}
	}
	if o.Architecture == "" {
		o.Architecture = "x86_64"
	}
	if o.BootMode == "" {
		o.BootMode = "uefi-preferred"
	}
	if o.RoleName == "" {
		o.RoleName = "vmimport"
	}
	if o.VolumeType == "" {
		o.VolumeType = "gp3"
	}
	if o.PollInterval <= 0 {
		o.PollInterval = 15 * time.Second
	}
	if !validEnum(o.Architecture, types.ArchitectureValues("").Values()) {
		return &Error{Path: "--arch", Msg: fmt.Sprintf("%q: want one of %v", o.Architecture, types.ArchitectureValues("").Values())}
	}
	if !validEnum(o.BootMode, types.BootModeValues("").Values()) {
		return &Error{Path: "--boot-mode", Msg: fmt.Sprintf("%q: want one of %v", o.BootMode, types.BootModeValues("").Values())}
	}
	return nil
}

func validEnum[T ~string](v string, vals []T) bool {
	for _, x := range vals {
		if string(x) == v {
			return true
		}
	}
	return false
}

// diskFormat maps an image file to ImportSnapshot's disk format.
func diskFormat(path string) (string, error) {
	switch strings.ToLower(filepath.Ext(path)) {
	case ".vmdk":
		return "VMDK", nil
	case ".raw", ".img":
		return "RAW", nil
	case ".vhd":
		return "VHD", nil
	}
	return "", &Error{Path: path, Msg: "want a .vmdk (stream-optimized, e.g. the ami format), .raw or .vhd image"}
}

// ImportAMI uploads image to s3://bucket/key (skipped when the same digest
// is already there), imports it as an EBS snapshot and registers an AMI
// from it (HVM, ENA, IMDSv2, the given boot mode and architecture). It
// returns the AMI id.
func ImportAMI(ctx context.Context, api EC2API, up *S3Target, image string, o AMIOptions) (string, error) {
	if err := o.check(); err != nil {
		return "", err
	}
	if err := CheckDisk(ctx, image); err != nil {
		return "", err
	}
	format, err := diskFormat(image)
	if err != nil {
		return "", err
	}
	sum, size, err := HashFile(ctx, image)
	if err != nil {
		return "", &Error{Path: image, Msg: errText(err)}
	}
	key := filepath.Base(image)
	if got, gsize, ok, err := up.Digest(ctx, key); err != nil {
		return "", err
	} else if ok && got == sum && gsize == size {
		logrus.Infof("publish aws: %s already at %s", key, up)
	} else if err := up.Put(ctx, key, image, sum, size); err != nil {
		return "", fmt.Errorf("uploading %s: %w", key, err)
	}

	imp, err := api.ImportSnapshot(ctx, &ec2.ImportSnapshotInput{
		ClientToken: aws.String("ecs-image-" + sum[:32]),
		Description: aws.String(o.Name),
		DiskContainer: &types.SnapshotDiskContainer{
			Description: aws.String(o.Name),
			Format:      aws.String(format),
			UserBucket:  &types.UserBucket{S3Bucket: aws.String(up.bucket), S3Key: aws.String(up.key(key))},
		},
		RoleName: aws.String(o.RoleName),
		TagSpecifications: []types.TagSpecification{{ResourceType: types.ResourceTypeImportSnapshotTask,
			Tags: []types.Tag{{Key: aws.String("Name"), Value: aws.String(o.Name)}, {Key: aws.String("ecs-image:sha256"), Value: aws.String(sum)}}}},
	})
	if err != nil {
		return "", fmt.Errorf("ImportSnapshot: %w", err)
	}
	task := aws.ToString(imp.ImportTaskId)
	logrus.Infof("publish aws: import snapshot task %s started", task)
	snap, err := waitSnapshot(ctx, api, task, o.PollInterval)
	if err != nil {
		return "", err
	}
	const root = "/dev/xvda"
	reg, err := api.RegisterImage(ctx, &ec2.RegisterImageInput{
		Name:               aws.String(o.Name),
		Description:        optional(o.Description),
		Architecture:       types.ArchitectureValues(o.Architecture),
		BootMode:           types.BootModeValues(o.BootMode),
		EnaSupport:         aws.Bool(true),
		ImdsSupport:        types.ImdsSupportValuesV20,
		VirtualizationType: aws.String("hvm"),
		RootDeviceName:     aws.String(root),
		BlockDeviceMappings: []types.BlockDeviceMapping{{
			DeviceName: aws.String(root),
			Ebs: &types.EbsBlockDevice{SnapshotId: aws.String(snap), DeleteOnTermination: aws.Bool(true),
				VolumeType: types.VolumeType(o.VolumeType)},
		}},
		TagSpecifications: []types.TagSpecification{{ResourceType: types.ResourceTypeImage,
			Tags: []types.Tag{{Key: aws.String("Name"), Value: aws.String(o.Name)}, {Key: aws.String("ecs-image:sha256"), Value: aws.String(sum)}}}},
	})
	if err != nil {
		return "", fmt.Errorf("RegisterImage (snapshot %s): %w", snap, err)
	}
	return aws.ToString(reg.ImageId), nil
}

func optional(s string) *string {
	if s == "" {
		return nil
	}
	return aws.String(s)
}

// waitSnapshot polls an import task until it completes, returning the
// snapshot id.
func waitSnapshot(ctx context.Context, api EC2API, task string, every time.Duration) (string, error) {
	last := ""
	for {
		out, err := api.DescribeImportSnapshotTasks(ctx, &ec2.DescribeImportSnapshotTasksInput{ImportTaskIds: []string{task}})
		if err != nil {
			return "", fmt.Errorf("DescribeImportSnapshotTasks %s: %w", task, err)
		}
		if len(out.ImportSnapshotTasks) != 1 || out.ImportSnapshotTasks[0].SnapshotTaskDetail == nil {
			return "", fmt.Errorf("import task %s: not found", task)
		}
		d := out.ImportSnapshotTasks[0].SnapshotTaskDetail
		status := aws.ToString(d.Status)
		line := fmt.Sprintf("%s %s%% %s", status, aws.ToString(d.Progress), aws.ToString(d.StatusMessage))
		if line != last {
			logrus.Infof("publish aws: import %s: %s", task, line)
			last = line
		}
		switch status {
		case "completed":
			if d.SnapshotId == nil {
				return "", fmt.Errorf("import task %s completed without a snapshot id", task)
			}
			return *d.SnapshotId, nil
		case "deleted", "deleting", "cancelled", "error":
			return "", fmt.Errorf("import task %s %s: %s", task, status, aws.ToString(d.StatusMessage))
		}
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-time.After(every):
		}
	}
}

// NewEC2Client builds an EC2 client from the default AWS configuration.
func NewEC2Client(ctx context.Context, region string) (*ec2.Client, error) {
	var lo []func(*config.LoadOptions) error
	if region != "" {
		lo = append(lo, config.WithRegion(region))
	}
	cfg, err := config.LoadDefaultConfig(ctx, lo...)
	if err != nil {
		return nil, fmt.Errorf("AWS configuration: %w", err)
	}
	if cfg.Region == "" {
		return nil, &Error{Path: "--region", Msg: "no AWS region: give --region or set AWS_REGION"}
	}
	return ec2.NewFromConfig(cfg), nil
}
