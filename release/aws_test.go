package release

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/ec2/types"
)

// fakeEC2 stands in for EC2 (which cannot run here): it records requests and
// walks an import task through active → completed.
type fakeEC2 struct {
	imports   []*ec2.ImportSnapshotInput
	describes int
	registers []*ec2.RegisterImageInput
	failWith  string // final task status, default "completed"
}

func (f *fakeEC2) ImportSnapshot(_ context.Context, in *ec2.ImportSnapshotInput, _ ...func(*ec2.Options)) (*ec2.ImportSnapshotOutput, error) {
	f.imports = append(f.imports, in)
	return &ec2.ImportSnapshotOutput{ImportTaskId: aws.String("import-snap-0123")}, nil
}

func (f *fakeEC2) DescribeImportSnapshotTasks(_ context.Context, in *ec2.DescribeImportSnapshotTasksInput, _ ...func(*ec2.Options)) (*ec2.DescribeImportSnapshotTasksOutput, error) {
	if len(in.ImportTaskIds) != 1 || in.ImportTaskIds[0] != "import-snap-0123" {
		return nil, errors.New("unknown task")
	}
	f.describes++
	d := &types.SnapshotTaskDetail{Status: aws.String("active"), Progress: aws.String("42"), StatusMessage: aws.String("converting")}
	if f.describes >= 3 {
		final := f.failWith
		if final == "" {
			final = "completed"
		}
		d = &types.SnapshotTaskDetail{Status: aws.String(final), StatusMessage: aws.String("ClientError: Disk validation failed")}
		if final == "completed" {
			d.SnapshotId = aws.String("snap-0abc")
			d.StatusMessage = nil
		}
	}
	return &ec2.DescribeImportSnapshotTasksOutput{ImportSnapshotTasks: []types.ImportSnapshotTask{{ImportTaskId: aws.String("import-snap-0123"), SnapshotTaskDetail: d}}}, nil
}

func (f *fakeEC2) RegisterImage(_ context.Context, in *ec2.RegisterImageInput, _ ...func(*ec2.Options)) (*ec2.RegisterImageOutput, error) {
	f.registers = append(f.registers, in)
	return &ec2.RegisterImageOutput{ImageId: aws.String("ami-0def")}, nil
}

func TestImportAMI(t *testing.T) {
	endpoint := versityGW(t)
	ctx := context.Background()
	img := filepath.Join(t.TempDir(), "ecs-1.0.ami.vmdk")
	disk(t, img, "vmdk", "1M", "-o", "subformat=streamOptimized")
	up, err := NewS3Target(ctx, "releases", "ami", S3Options{Endpoint: endpoint})
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeEC2{}
	id, err := ImportAMI(ctx, f, up, img, AMIOptions{Name: "ecs-1.0", BootMode: "uefi", PollInterval: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if id != "ami-0def" {
		t.Fatalf("AMI id %q", id)
	}
	// The S3 part ran for real.
	if sum, _, ok, err := up.Digest(ctx, "ecs-1.0.ami.vmdk"); err != nil || !ok || sum != sha(t, img) {
		t.Fatalf("uploaded object digest %q %v %v", sum, ok, err)
	}
	// Request shapes.
	if len(f.imports) != 1 {
		t.Fatalf("%d ImportSnapshot calls", len(f.imports))
	}
	in := f.imports[0]
	dc := in.DiskContainer
	if aws.ToString(dc.Format) != "VMDK" || aws.ToString(dc.UserBucket.S3Bucket) != "releases" || aws.ToString(dc.UserBucket.S3Key) != "ami/ecs-1.0.ami.vmdk" {
		t.Fatalf("disk container %+v / %+v", dc, dc.UserBucket)
	}
	if aws.ToString(in.RoleName) != "vmimport" || !strings.HasPrefix(aws.ToString(in.ClientToken), "ecs-image-") {
		t.Fatalf("import role %q token %q", aws.ToString(in.RoleName), aws.ToString(in.ClientToken))
	}
	if f.describes != 3 {
		t.Fatalf("polled %d times", f.describes)
	}
	if len(f.registers) != 1 {
		t.Fatalf("%d RegisterImage calls", len(f.registers))
	}
	r := f.registers[0]
	if aws.ToString(r.Name) != "ecs-1.0" || r.Architecture != types.ArchitectureValuesX8664 || r.BootMode != types.BootModeValuesUefi ||
		!aws.ToBool(r.EnaSupport) || aws.ToString(r.VirtualizationType) != "hvm" || r.ImdsSupport != types.ImdsSupportValuesV20 ||
		aws.ToString(r.RootDeviceName) != "/dev/xvda" {
		t.Fatalf("RegisterImage %+v", r)
	}
	bd := r.BlockDeviceMappings
	if len(bd) != 1 || aws.ToString(bd[0].DeviceName) != "/dev/xvda" || aws.ToString(bd[0].Ebs.SnapshotId) != "snap-0abc" ||
		!aws.ToBool(bd[0].Ebs.DeleteOnTermination) || bd[0].Ebs.VolumeType != types.VolumeTypeGp3 {
		t.Fatalf("block devices %+v", bd)
	}

	// A failed import reports EC2's message and registers nothing.
	f2 := &fakeEC2{failWith: "deleted"}
	_, err = ImportAMI(ctx, f2, up, img, AMIOptions{Name: "ecs-1.0", PollInterval: time.Millisecond})
	if err == nil || !strings.Contains(err.Error(), "Disk validation failed") || len(f2.registers) != 0 {
		t.Fatalf("failed import = %v, registers %d", err, len(f2.registers))
	}
}

func TestAMIOptionsCheck(t *testing.T) {
	for _, o := range []AMIOptions{{}, {Name: "x", Architecture: "sparc"}, {Name: "x", BootMode: "bios"}} {
		if err := o.check(); err == nil || !IsBadInput(err) {
			t.Errorf("check(%+v) = %v", o, err)
		}
	}
	o := AMIOptions{Name: "x"}
	if err := o.check(); err != nil || o.Architecture != "x86_64" || o.BootMode != "uefi-preferred" || o.RoleName != "vmimport" {
		t.Fatalf("defaults %+v %v", o, err)
	}
	if _, err := diskFormat("x.qcow2"); err == nil {
		t.Fatal("qcow2 accepted for AMI import")
	}
}
