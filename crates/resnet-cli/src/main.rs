fn main(){resnet::x()}
